"""SQLiteStore: records survive reopening; order and filters; a locked or full database stalls
nothing, loses nothing and says so."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.store.sqlite import SQLiteStore
from tests.disks import fill, small_disk
from tests.waiting import until


async def test_records_survive_reopening_and_keep_order(tmp_path: Any) -> None:
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path)
    await store.open()
    for i, owner in enumerate(["a", "b", "a"]):
        await store.put_sandbox({"id": f"s{i}", "owner": owner, "status": "running", "n": i})
    await store.put_sandbox({"id": "s0", "owner": "a", "status": "terminated", "n": 0})
    for i in range(3):
        await store.put_execution({"id": f"e{i}", "sandbox_id": "s0", "status": "queued"})
    await store.put_execution({"id": "e0", "sandbox_id": "s0", "status": "completed"})
    await store.add_api_key("a", "hash-a")
    await store.close()

    store = SQLiteStore(path)
    await store.open()
    assert [r["id"] for r in await store.list_sandboxes(owner="a")] == ["s0", "s2"]
    assert [r["id"] for r in await store.list_sandboxes(statuses=["running"])] == ["s1", "s2"]
    assert (await store.get_sandbox("s0"))["status"] == "terminated"
    assert await store.get_sandbox("nope") is None
    assert [r["id"] for r in await store.list_executions("s0")] == ["e0", "e1", "e2"]
    assert [r["id"] for r in await store.list_executions("s0", limit=1, offset=1)] == ["e1"]
    assert [r["id"] for r in await store.list_unfinished_executions()] == ["e1", "e2"]
    assert await store.find_api_key("hash-a") == "a"
    assert await store.find_api_key("hash-x") is None
    assert await store.count_api_keys() == 1
    await store.close()


async def test_a_read_sees_every_write_handed_over_before_it(tmp_path: Any) -> None:
    store = SQLiteStore(str(tmp_path / "g.db"))
    await store.open()
    try:
        for i in range(50):
            store.put_execution({"id": f"e{i}", "sandbox_id": "s", "status": "queued"})  # not awaited
        store.put_execution({"id": "e7", "sandbox_id": "s", "status": "completed"})
        records = await store.list_executions("s")
        assert [r["id"] for r in records] == [f"e{i}" for i in range(50)]
        assert records[7]["status"] == "completed"
    finally:
        await store.close()


async def test_a_record_the_database_rejects_fails_alone(tmp_path: Any) -> None:
    store = SQLiteStore(str(tmp_path / "g.db"))
    await store.open()
    try:
        await store.add_api_key("a", "same-hash")
        # One batch: the duplicate key violates the primary key, the sandbox beside it is stored.
        duplicate = store.add_api_key("b", "same-hash")
        sandbox = store.put_sandbox({"id": "s", "owner": "a", "status": "running"})
        with pytest.raises(sqlite3.IntegrityError):
            await duplicate
        await sandbox
        assert (await store.get_sandbox("s"))["status"] == "running"
        assert await store.find_api_key("same-hash") == "a"
        assert store.problem is None
    finally:
        await store.close()


async def test_a_locked_database_does_not_stall_the_event_loop(tmp_path: Any) -> None:
    """Commits wait for a lock on the store's thread: the loop runs on (a 60 s busy timeout would
    otherwise freeze it), and the write lands once the lock is gone."""
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path, busy_timeout=60)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        written = asyncio.ensure_future(store.put_sandbox({"id": "s", "owner": "a", "status": "running"}))
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the writer waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not written.done() and store.problem is None
        assert store.held_writes() == 1
        other.execute("ROLLBACK")
        await asyncio.wait_for(written, 30)
        assert (await store.get_sandbox("s"))["status"] == "running"
    finally:
        other.close()
        await store.close()


async def test_a_database_locked_past_the_busy_timeout_is_retried(tmp_path: Any) -> None:
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path, busy_timeout=0.05, max_backoff=0.1)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        written = asyncio.ensure_future(store.put_sandbox({"id": "s", "owner": "a", "status": "running"}))
        problem = await until(lambda: store.problem, what="the store to report the lock")
        assert "locked" in problem
        with pytest.raises(StoreUnavailable) as refused:
            store.check_available()
        assert refused.value.code == "store_unavailable" and "locked" in refused.value.message
        # Reads answer from what is durable instead of waiting for the held write.
        assert await store.get_sandbox("s") is None
        other.execute("ROLLBACK")
        await asyncio.wait_for(written, 30)
        assert store.problem is None and store.held_writes() == 0
        assert (await store.get_sandbox("s"))["status"] == "running"
    finally:
        other.close()
        await store.close()


async def test_a_full_disk_holds_writes_in_order_until_there_is_room(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size_mb=8) as disk:
        path = str(disk / "g.db")
        store = SQLiteStore(path, max_backoff=0.1)
        await store.open()
        await store.put_sandbox({"id": "s", "owner": "a", "status": "running"})
        await store.put_execution({"id": "e0", "sandbox_id": "s", "status": "completed"})
        filler = fill(disk)

        big = {"id": "e1", "sandbox_id": "s", "status": "running", "output": "x" * (2 << 20)}
        queued = {"id": "e2", "sandbox_id": "s", "status": "queued"}
        writes = [store.put_execution(big), store.put_execution(queued)]
        problem = await until(lambda: store.problem, what="the store to report the full disk")
        assert "full" in problem
        with pytest.raises(StoreUnavailable):
            store.check_available()
        assert store.describe() == {"kind": "sqlite", "available": False, "problem": problem,
                                    "held_writes": 2}
        # A newer version of a held record takes its place: still two held, order kept.
        writes.append(store.put_execution({**big, "status": "completed"}))
        writes.append(store.put_sandbox({"id": "s", "owner": "a", "status": "terminated"}))
        await until(lambda: store.held_writes() == 3, what="the writes to coalesce")
        assert not any(asyncio.ensure_future(w).done() for w in writes)
        assert [r["id"] for r in await store.list_executions("s")] == ["e0"]  # what is durable

        filler.unlink()
        await asyncio.wait_for(asyncio.gather(*writes), 30)
        assert store.problem is None and store.held_writes() == 0
        await store.close()

        store = SQLiteStore(path)
        await store.open()
        records = await store.list_executions("s")
        assert [(r["id"], r["status"]) for r in records] == [
            ("e0", "completed"), ("e1", "completed"), ("e2", "queued")]
        assert records[1]["output"] == big["output"]
        assert (await store.get_sandbox("s"))["status"] == "terminated"
        await store.close()
