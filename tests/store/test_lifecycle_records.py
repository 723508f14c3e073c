"""The store's lifecycle records, on both stores (SQLite and a real PostgreSQL, see conftest.py): the
event outbox, webhook cursors, and writes within quotas (check and write in one transaction:
racing writers cannot both take the last slot)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.events.model import SANDBOX_CREATED, SANDBOX_PAUSED, event
from gateway.store.base import Budget
from gateway.store.sql import SQLStore
from tests.stores import Backend
from tests.waiting import until

LIVE = ("creating", "running", "failed", "terminating")


def sandbox(sid: str, owner: str = "alice", status: str = "running", cpu: float = 1.0, memory_mb: int = 512) -> dict[str, Any]:
    return {"id": sid, "owner": owner, "status": status, "resources": {"cpu": cpu, "memory_mb": memory_mb}}


async def test_events_are_stored_with_their_change_numbered_in_order(store: SQLStore, backend: Backend) -> None:
    await store.put_sandbox(sandbox("a"), events=[event(SANDBOX_CREATED, "a", "alice")])
    await store.put_sandbox(sandbox("b", owner="bob"), events=[event(SANDBOX_CREATED, "b", "bob")])
    await store.put_sandbox(sandbox("a", status="paused"), events=[event(SANDBOX_PAUSED, "a", "alice", reason="idle")])
    everything = await store.list_events(after=0)
    assert [(e["type"], e["sandbox_id"]) for e in everything] == [
        (SANDBOX_CREATED, "a"), (SANDBOX_CREATED, "b"), (SANDBOX_PAUSED, "a")]
    ids = [int(e["id"]) for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert everything[2]["data"] == {"reason": "idle"} and everything[2]["owner"] == "alice"
    assert [e["sandbox_id"] for e in await store.list_events(after=0, owner="bob")] == ["b"]
    assert [e["type"] for e in await store.list_events(after=ids[0], types=[SANDBOX_PAUSED])] == [SANDBOX_PAUSED]
    assert await store.last_event_id() == ids[-1]
    # Kept across reopening (a second store on the same file sees them); pruned by age.
    other = backend.store()
    await other.open()
    try:
        assert len(await other.list_events(after=0)) == 3
        assert await other.prune_events(before=0) == 0
        assert await other.prune_events(before=1e12) == 3
        assert await other.list_events(after=0) == []
    finally:
        await other.close()


async def test_racing_creates_cannot_pass_the_count_together(store: SQLStore) -> None:
    budgets = [Budget(statuses=LIVE, count=3)]
    results = await asyncio.gather(*(
        store.put_sandbox_within(sandbox(f"s{i}", status="creating"), budgets,
                                 events=[event(SANDBOX_CREATED, f"s{i}", "alice")])
        for i in range(10)))
    assert sum(results) == 3
    assert len(await store.list_sandboxes(owner="alice")) == 3
    assert len(await store.list_events(after=0)) == 3  # a refused write's events are refused with it
    # Another owner has a budget of its own; ended and paused sandboxes do not count as live.
    assert await store.put_sandbox_within(sandbox("b1", owner="bob"), budgets)
    await store.put_sandbox(sandbox("s0", status="terminated"))
    await store.put_sandbox(sandbox("s1", status="paused"))
    survivor = next(r["id"] for r in await store.list_sandboxes(owner="alice", statuses=["creating"]))
    assert survivor not in ("s0", "s1")  # (which three won the race is not ours to say)
    assert await store.put_sandbox_within(sandbox("s7"), budgets)
    assert await store.put_sandbox_within(sandbox("s8"), budgets)
    assert not await store.put_sandbox_within(sandbox("s9"), budgets)
    # A record already counted is not counted twice when it changes.
    assert await store.put_sandbox_within(sandbox("s7", status="failed"), budgets)
    usage = await store.owner_usage("alice")
    assert (usage["creating"][0], usage["running"][0], usage["failed"][0], usage["paused"][0]) == (1, 1, 1, 1)


async def test_cpu_and_memory_are_summed_over_live_sandboxes(store: SQLStore) -> None:
    budgets = [Budget(statuses=LIVE, cpu=4, memory_mb=2048), Budget(statuses=("paused",), count=1)]
    assert await store.put_sandbox_within(sandbox("a", cpu=3), budgets)
    assert not await store.put_sandbox_within(sandbox("b", cpu=1.5), budgets)
    assert await store.put_sandbox_within(sandbox("b", cpu=1, memory_mb=1536), budgets)
    assert not await store.put_sandbox_within(sandbox("c", cpu=0.1, memory_mb=1), budgets)  # memory is full
    assert await store.owner_usage("alice", exclude="a") == {"running": (1, 1.0, 1536)}
    assert await store.put_sandbox_within(sandbox("a", status="paused", cpu=3), budgets)  # paused: not live
    assert not await store.put_sandbox_within(sandbox("b", status="paused"), budgets)  # one paused at most
    assert await store.put_sandbox_within(sandbox("c", cpu=3), budgets)  # a's cores are free again


async def test_executions_per_minute(store: SQLStore) -> None:
    def execution(eid: str) -> dict[str, Any]:
        return {"id": eid, "sandbox_id": "s", "status": "queued"}

    # (``since`` is ``at`` minus a minute, as the quota computes it)
    assert await store.put_execution_within(execution("e1"), "alice", since=40, limit=2, at=100)
    assert await store.put_execution_within(execution("e2"), "alice", since=50, limit=2, at=110)
    assert not await store.put_execution_within(execution("e3"), "alice", since=90, limit=2, at=150)
    assert await store.get_execution("e3") is None
    assert await store.recent_executions("alice", since=90) == (2, 100.0)
    assert await store.recent_executions("alice", since=120) == (0, None)
    assert await store.put_execution_within(execution("e4"), "bob", since=90, limit=2, at=150)
    # Once the oldest is out of the window there is room again.
    assert await store.put_execution_within(execution("e5"), "alice", since=105, limit=2, at=165)
    assert [r["id"] for r in await store.list_executions("s")] == ["e1", "e2", "e4", "e5"]


async def test_webhook_cursors(store: SQLStore) -> None:
    assert await store.webhook_cursor("http://127.0.0.1:1/hook") is None
    await store.set_webhook_cursor("http://127.0.0.1:1/hook", 5)
    await store.set_webhook_cursor("http://127.0.0.1:1/hook", 9)
    assert await store.webhook_cursor("http://127.0.0.1:1/hook") == 9


async def test_events_are_numbered_in_commit_order_across_replicas(postgres_url: str) -> None:
    """An event's number is taken at its insert: a replica whose transaction numbered an event and then
    stalls before committing must not let another replica's later event commit first (a reader resuming
    after that one would skip the stalled one for ever). The other replica's event waits for it."""
    import asyncpg

    from gateway.store.postgres import PostgresStore

    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.open()
    await second.open()
    blocker = await asyncpg.connect(postgres_url)
    try:
        await first.put_sandbox(sandbox("x"))
        stall = blocker.transaction()
        await stall.start()
        await blocker.execute("SELECT 1 FROM sandboxes WHERE id = 'x' FOR UPDATE")
        # One batch of the first replica's: an event numbered, then a write that waits for x's row.
        numbered = first.put_sandbox(sandbox("y"), events=[event(SANDBOX_CREATED, "y", "alice")])
        stalled = first.put_sandbox(sandbox("x", status="paused"))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type IN ('Lock', 'advisory') AND pid <> $1"

        async def waiters() -> int:
            return int(await blocker.fetchval(waiting, blocker.get_server_pid()))

        await until(waiters, lambda n: n >= 1, what="the first replica's transaction to wait for the row")
        later = second.put_sandbox(sandbox("z"), events=[event(SANDBOX_CREATED, "z", "bob")])
        await until(waiters, lambda n: n >= 2, what="the second replica's event to wait for the first's commit")
        # Nothing committed, so nothing a reader could skip (read here: the stores would wait for their writes).
        assert await blocker.fetchval("SELECT count(*) FROM events") == 0
        await stall.rollback()
        await asyncio.gather(numbered, stalled, later)
        events = await second.list_events(after=0)
        assert [e["sandbox_id"] for e in events] == ["y", "z"]
        assert int(events[0]["id"]) < int(events[1]["id"])
    finally:
        await blocker.close()
        await first.close()
        await second.close()
