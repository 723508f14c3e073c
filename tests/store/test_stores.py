"""Both stores, the same semantics: SQLite and a real PostgreSQL (see conftest.py). Records,
order and filters; read-your-writes; a write the database rejects fails alone; a real outage
loses nothing; conditional writes hold against a racing second store (another replica);
migrations apply once, in order, and a newer database is refused."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import migrations
from gateway.store.base import Budget
from gateway.store.migrations import Migration, SchemaTooNew
from gateway.store.sql import SQLStore
from tests.stores import Backend
from tests.waiting import until

#: Strings the JSON and the database must keep exactly: NUL (which PostgreSQL's jsonb rejects),
#: non-ASCII, and one long enough to be encoded in slices.
AWKWARD = {"nul": "a\x00b", "text": "é ü 中 \U0001F600 \u2028 \"quoted\" \\", "long": "x\n" * (1 << 17)}


async def test_records_survive_reopening_and_keep_order(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    for i, owner in enumerate(["a", "b", "a"]):
        await store.put_sandbox({"id": f"s{i}", "owner": owner, "status": "running", "n": i})
    await store.put_sandbox({"id": "s0", "owner": "a", "status": "terminated", "n": 0})
    for i in range(3):
        await store.put_execution({"id": f"e{i}", "sandbox_id": "s0", "status": "queued"})
    await store.put_execution({"id": "e0", "sandbox_id": "s0", "status": "completed", **AWKWARD})
    await store.add_api_key("a", "hash-a")
    await store.close()

    store = backend.store()
    await store.open()
    try:
        assert [r["id"] for r in await store.list_sandboxes(owner="a")] == ["s0", "s2"]
        assert [r["id"] for r in await store.list_sandboxes(statuses=["running"])] == ["s1", "s2"]
        assert [r["id"] for r in await store.list_sandboxes(owner="a", statuses=[])] == ["s0", "s2"]
        assert (await store.get_sandbox("s0"))["status"] == "terminated"
        assert await store.get_sandbox("nope") is None
        assert [r["id"] for r in await store.list_executions("s0")] == ["e0", "e1", "e2"]
        assert [r["id"] for r in await store.list_executions("s0", limit=1, offset=1)] == ["e1"]
        assert [r["id"] for r in await store.list_unfinished_executions()] == ["e1", "e2"]
        assert await store.get_execution("e0") == {"id": "e0", "sandbox_id": "s0", "status": "completed",
                                                   **AWKWARD}
        assert await store.find_api_key("hash-a") == "a"
        assert await store.find_api_key("hash-x") is None
        assert await store.count_api_keys() == 1
        assert store.describe() == {"kind": backend.name, "available": True, "problem": None,
                                    "held_writes": 0}
    finally:
        await store.close()


async def test_a_read_sees_every_write_handed_over_before_it(store: SQLStore) -> None:
    for i in range(50):
        store.put_execution({"id": f"e{i}", "sandbox_id": "s", "status": "queued"})  # not awaited
    store.put_execution({"id": "e7", "sandbox_id": "s", "status": "completed"})
    records = await store.list_executions("s")
    assert [r["id"] for r in records] == [f"e{i}" for i in range(50)]
    assert records[7]["status"] == "completed"


async def test_a_record_the_database_rejects_fails_alone(store: SQLStore) -> None:
    await store.add_api_key("a", "same-hash")
    # One batch: the duplicate key violates the primary key; the writes beside it are stored.
    before = store.put_sandbox({"id": "s1", "owner": "a", "status": "running"})
    duplicate = store.add_api_key("b", "same-hash")
    after = store.put_sandbox({"id": "s2", "owner": "a", "status": "running"})
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        await duplicate
    await asyncio.gather(before, after)
    assert [r["id"] for r in await store.list_sandboxes()] == ["s1", "s2"]
    assert await store.find_api_key("same-hash") == "a"
    assert store.problem is None


async def test_an_outage_holds_writes_in_order_and_loses_nothing(backend: Backend) -> None:
    store = backend.store(max_backoff=0.2)
    await store.open()
    await store.put_sandbox({"id": "s", "owner": "a", "status": "running"})
    await store.put_execution({"id": "e0", "sandbox_id": "s", "status": "completed"})
    backend.fail()

    big = {"id": "e1", "sandbox_id": "s", "status": "running", "output": "x" * (2 << 20)}
    queued = {"id": "e2", "sandbox_id": "s", "status": "queued"}
    writes = [store.put_execution(big), store.put_execution(queued)]
    problem = await until(lambda: store.problem, what="the store to report the outage")
    assert any(word in problem for word in backend.failure_words), problem
    with pytest.raises(StoreUnavailable) as refused:
        store.check_available()
    assert refused.value.code == "store_unavailable" and problem in refused.value.message
    assert store.describe()["available"] is False and store.describe()["held_writes"] == 2
    # A newer version of a held record takes its place: three held, in order.
    writes.append(store.put_execution({**big, "status": "completed"}))
    writes.append(store.put_sandbox({"id": "s", "owner": "a", "status": "terminated"}))
    await until(lambda: store.held_writes() == 3, what="the writes to coalesce")
    assert not any(asyncio.ensure_future(w).done() for w in writes)
    if backend.readable_while_failing:  # reads answer from what is durable, without waiting
        assert [r["id"] for r in await store.list_executions("s")] == ["e0"]
    else:
        with pytest.raises(StoreUnavailable):
            await store.list_executions("s")

    backend.recover()
    await asyncio.wait_for(asyncio.gather(*writes), 60)
    assert store.problem is None and store.held_writes() == 0
    await store.close()

    store = backend.store()
    await store.open()
    try:
        records = await store.list_executions("s")
        assert [(r["id"], r["status"]) for r in records] == [
            ("e0", "completed"), ("e1", "completed"), ("e2", "queued")]
        assert records[1]["output"] == big["output"]
        assert (await store.get_sandbox("s"))["status"] == "terminated"
    finally:
        await store.close()


def sandbox(sandbox_id: str, status: str, owner: str = "a") -> dict[str, str]:
    return {"id": sandbox_id, "owner": owner, "status": status}


async def test_a_conditional_update_applies_only_from_the_expected_statuses(store: SQLStore) -> None:
    await store.put_sandbox(sandbox("s", "running"))
    assert await store.put_sandbox_if(sandbox("s", "paused"), statuses=["running"])
    assert not await store.put_sandbox_if(sandbox("s", "failed"), statuses=["running"])
    assert not await store.put_sandbox_if(sandbox("nope", "paused"), statuses=["running"])
    assert (await store.get_sandbox("s"))["status"] == "paused"
    assert await store.get_sandbox("nope") is None

    # Two transitions racing from the same status (a pause, a failure): exactly one applies.
    await store.put_sandbox(sandbox("s", "running"))
    outcomes = await asyncio.gather(store.put_sandbox_if(sandbox("s", "paused"), statuses=["running"]),
                                    store.put_sandbox_if(sandbox("s", "failed"), statuses=["running"]))
    assert sorted(outcomes) == [False, True]
    assert (await store.get_sandbox("s"))["status"] == ("paused" if outcomes[0] else "failed")


async def test_two_stores_racing_for_the_last_places_of_a_quota_get_exactly_them(backend: Backend) -> None:
    """Two stores on one database, as two gateway replicas: the count and the write are atomic."""
    first, second = backend.store(), backend.store()
    await first.open()
    await second.open()
    try:
        budgets = [Budget(statuses=("creating", "running"), count=5)]
        await first.put_sandbox(sandbox("old", "terminated", "alice"))  # not counted
        await first.put_sandbox(sandbox("s0", "running", "alice"))
        creates = [store.put_sandbox_within(sandbox(f"s{i}", "creating", "alice"), budgets)
                   for i, store in zip(range(1, 13), itertools.cycle([first, second]))]
        results = await asyncio.gather(*creates)
        assert sum(results) == 4, results
        assert len(await second.list_sandboxes(owner="alice", statuses=["creating", "running"])) == 5
        assert await second.put_sandbox_within(sandbox("b", "creating", "bob"), budgets)
        # A place freed is a place taken again.
        await first.put_sandbox(sandbox("s0", "terminated", "alice"))
        assert await second.put_sandbox_within(sandbox("s99", "creating", "alice"), budgets)
    finally:
        await first.close()
        await second.close()


async def test_a_new_database_gets_every_migration_once(backend: Backend,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = backend.store()
    await store.open()
    assert await store.schema_version() == migrations.LATEST
    await store.close()

    # A migration added later (say, the lifecycle's event outbox) is applied at the next start, once.
    added = Migration(migrations.LATEST + 1, "a table added later",
                      sqlite=("CREATE TABLE later (id TEXT PRIMARY KEY)",),
                      postgresql=("CREATE TABLE later (id TEXT PRIMARY KEY)",))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, added))
    monkeypatch.setattr(migrations, "LATEST", added.version)
    for _ in range(2):  # (CREATE TABLE without IF NOT EXISTS: applying it twice would fail)
        store = backend.store()
        await store.open()
        assert await store.schema_version() == added.version
        await store.close()
    await backend.execute("INSERT INTO later (id) VALUES ('it exists')")


async def test_a_database_from_a_newer_gateway_is_refused(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.close()
    await backend.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                          f"VALUES ({migrations.LATEST + 1}, 'from the future', 'now')")
    with pytest.raises(SchemaTooNew, match="newer than this gateway"):
        await backend.store().open()


async def test_stores_opening_at_once_on_a_new_database_both_start(backend: Backend) -> None:
    """Replicas starting together: the migrations run once, the others wait for them."""
    stores = [backend.store() for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        versions = await asyncio.gather(*(store.schema_version() for store in stores))
        assert versions == [migrations.LATEST] * 3
    finally:
        await asyncio.gather(*(store.close() for store in stores))
