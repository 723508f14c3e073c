"""History retention in the store, on both stores (SQLite and a real PostgreSQL, see conftest.py): a sandbox
that ended before the cutoff goes with all its executions and its lease, in bounded batches; a live,
paused, recently ended or held one stays, with everything of it; replicas pruning at once remove each
sandbox once. Time is set in the records (``terminated_at``), never waited for."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from gateway import timestamps
from gateway.store import migrations
from gateway.store.postgres import PostgresStore
from gateway.store.sql import SQLStore
from tests.stores import Backend

NOW = timestamps.now()
DAY = 86400.0
ENDED = ["terminated"]
LIVE = ("creating", "running", "paused", "failed", "terminating")
#: Live records that (unlike any real one) say they ended 400 days ago: only the status decides.
LONG_AGO = {status: 400.0 for status in LIVE if status != "running"}


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def sandbox(sid: str, status: str = "terminated", *, ended_days_ago: float | None = None) -> dict[str, Any]:
    return {"id": sid, "owner": "alice", "status": status, "resources": {"cpu": 1.0, "memory_mb": 512},
            "created_at": timestamps.to_iso(days_ago(100)), "last_active_at": timestamps.to_iso(days_ago(100)),
            "terminated_at": None if ended_days_ago is None else timestamps.to_iso(days_ago(ended_days_ago))}


def execution(eid: str, sid: str) -> dict[str, Any]:
    return {"id": eid, "sandbox_id": sid, "status": "completed", "code": "print('x' * 100_000)",
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * 100_000 + "\n"}]}


async def put(store: SQLStore, record: dict[str, Any], executions: int = 2) -> list[str]:
    """Store the sandbox and ``executions`` executions of it; their ids."""
    await store.put_sandbox(record)
    ids = [f"{record['id']}-e{n}" for n in range(executions)]
    for eid in ids:
        await store.put_execution(execution(eid, record["id"]))
    return ids


async def prune(store: SQLStore, *, older_than_days: float = 30, limit: int = 500) -> int:
    return await store.prune_history(statuses=ENDED, before=days_ago(older_than_days).timestamp(), limit=limit)


async def kept(store: SQLStore, sid: str, executions: list[str]) -> bool:
    """Whether the sandbox and every one of its executions are all there (False: all gone; else it fails)."""
    record = await store.get_sandbox(sid)
    found = [await store.get_execution(eid) is not None for eid in executions]
    listed = [r["id"] for r in await store.list_executions(sid)]
    if record is None:
        assert not any(found) and listed == [], (sid, found, listed)  # never half a sandbox
        return False
    assert all(found) and listed == executions, (sid, found, listed)
    return True


async def test_an_ended_sandbox_goes_with_its_executions_once_past_the_retention(store: SQLStore) -> None:
    old = await put(store, sandbox("old", ended_days_ago=40), executions=3)
    recent = await put(store, sandbox("recent", ended_days_ago=1))
    # Live and paused sandboxes stay whatever their age, even records that say they ended long ago.
    live = {status: await put(store, sandbox(status, status, ended_days_ago=LONG_AGO.get(status)))
            for status in LIVE}

    assert await prune(store) == 1
    assert not await kept(store, "old", old)
    assert await kept(store, "recent", recent)
    for status, executions in live.items():
        assert await kept(store, status, executions), status
        assert (await store.get_sandbox(status) or {})["status"] == status
    listed = [r["id"] for r in await store.list_sandboxes(owner="alice")]
    assert listed == ["recent", *LIVE]
    assert await store.count_sandboxes(owner="alice") == 6

    assert await prune(store) == 0  # again: nothing more, nothing else
    assert await kept(store, "recent", recent)
    assert await prune(store, older_than_days=0.5) == 1  # a shorter retention takes the recent one too
    assert not await kept(store, "recent", recent)
    assert [r["id"] for r in await store.list_sandboxes()] == list(LIVE)


async def test_a_pass_forgets_at_most_a_batch_longest_ended_first(store: SQLStore) -> None:
    executions = {f"s{days}": await put(store, sandbox(f"s{days}", ended_days_ago=days), executions=1)
                  for days in (31, 35, 50, 33, 90)}
    assert await prune(store, limit=2) == 2
    assert sorted(r["id"] for r in await store.list_sandboxes()) == ["s31", "s33", "s35"]
    assert await prune(store, limit=2) == 2
    assert [r["id"] for r in await store.list_sandboxes()] == ["s31"]
    assert await prune(store, limit=2) == 1
    assert await prune(store, limit=2) == 0
    for sid, ids in executions.items():
        assert not await kept(store, sid, ids)


async def test_a_sandbox_a_replica_alive_holds_stays_and_a_dead_ones_lease_goes_with_it(
        store: SQLStore) -> None:
    held = await put(store, sandbox("held", ended_days_ago=40))
    await store.beat("r1", "http://127.0.0.1:1", 60)
    assert await store.claim_lease("held", "r1")
    assert await prune(store) == 0
    assert await kept(store, "held", held)
    assert (await store.get_lease("held") or {})["alive"]

    await store.stop_beating("r1")  # the replica died: its lease binds nobody
    assert await prune(store) == 1
    assert not await kept(store, "held", held)
    assert await store.get_lease("held") is None


async def test_replicas_pruning_at_once_forget_each_sandbox_once(store: SQLStore, backend: Backend) -> None:
    executions = {f"s{n}": await put(store, sandbox(f"s{n}", ended_days_ago=40 + n)) for n in range(12)}
    others = [backend.store() for _ in range(2)]
    for other in others:
        await other.open()
    try:
        # Rounds of a pass on each replica at once (they read the same oldest ids, one removes them), until
        # a round finds nothing left.
        rounds = [await asyncio.gather(*(prune(s, limit=5) for s in (store, *others))) for _ in range(6)]
        assert sum(map(sum, rounds)) == 12 and not any(rounds[-1]), rounds
        for sid, ids in executions.items():
            assert not await kept(store, sid, ids)
        assert all(s.problem is None and s.held_writes() == 0 for s in (store, *others))
    finally:
        for other in others:
            await other.close()


async def test_a_database_from_before_retention_learns_when_its_sandboxes_ended(backend: Backend) -> None:
    """Migration 4 reads ``ended_at`` out of the records already there."""
    await backend.execute(migrations.CREATE_TABLE)
    for migration in migrations.MIGRATIONS[:3]:
        for statement in migration.statements(backend.name):
            await backend.execute(statement)
        await backend.execute(f"INSERT INTO schema_migrations (version, name, applied_at) "
                              f"VALUES ({migration.version}, 'before', 'then')")
    records = (sandbox("old", ended_days_ago=40), sandbox("recent", ended_days_ago=1), sandbox("live", "running"))
    for record in records:
        await backend.execute("INSERT INTO sandboxes (id, owner, status, record) VALUES "
                              f"('{record['id']}', 'alice', '{record['status']}', '{_json(record)}')")
    store = backend.store()
    await store.open()
    try:
        assert await store.schema_version() == migrations.LATEST
        assert await prune(store) == 1
        assert [r["id"] for r in await store.list_sandboxes()] == ["recent", "live"]
        assert await prune(store, older_than_days=0.5) == 1
        assert [r["id"] for r in await store.list_sandboxes()] == ["live"]
    finally:
        await store.close()


async def test_a_sandbox_another_transaction_holds_is_skipped_whole_not_waited_for(postgres_url: str) -> None:
    """PostgreSQL: a pass takes the rows it removes and skips those another transaction holds (another
    replica's pass, a write of that record), so it neither waits for them nor removes half of one."""
    store = PostgresStore(postgres_url)
    await store.open()
    blocker = await asyncpg.connect(postgres_url)
    try:
        locked = await put(store, sandbox("locked", ended_days_ago=40))
        free = await put(store, sandbox("free", ended_days_ago=41))
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT id FROM sandboxes WHERE id = 'locked' FOR UPDATE")
        assert await asyncio.wait_for(prune(store), 10) == 1
        assert not await kept(store, "free", free)
        assert await kept(store, "locked", locked)
        await transaction.rollback()
        assert await prune(store) == 1
        assert not await kept(store, "locked", locked)
    finally:
        await blocker.close()
        await store.close()


def _json(record: dict[str, Any]) -> str:
    """A record as an SQL string literal's content."""
    return json.dumps(record).replace("'", "''")
