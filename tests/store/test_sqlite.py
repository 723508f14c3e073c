"""SQLiteStore's own cases (the semantics both stores share are in test_stores.py): a locked
database stalls neither the loop nor a write; small batches commit on the loop's thread, the
rest on the writer's; a database from before migrations is adopted; WAL checkpoints run beside
commits."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import migrations
from gateway.store.sqlite import SQLiteStore
from tests.waiting import until


async def test_a_locked_database_does_not_stall_the_event_loop(tmp_path: Any) -> None:
    """Commits wait for a lock on the store's thread: the loop runs on (a 60 s busy timeout would
    otherwise freeze it), and the write lands once the lock is gone. A write small enough to
    commit on the loop's thread finds the lock there at once and goes to the store's thread."""
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
        assert store.loop_commits == 0
    finally:
        other.close()
        await store.close()


async def test_small_batches_commit_on_the_loop_and_the_rest_on_the_writer_thread(tmp_path: Any) -> None:
    """A small record commits on the loop's thread, durable for any other connection once its
    write returns; a large one, any behind a job of the writer thread, and a prune, go to that
    thread, in order; a store whose commits wait for the disk never commits on the loop."""
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path, checkpoint_pages=16)  # 64 KiB: the large record is past it
    held = threading.Event()  # the checkpoint waits for it: the small write comes while it runs
    checkpoint = store._checkpoint_here
    store._checkpoint_here = lambda: (held.wait(30), checkpoint())[1]  # type: ignore[method-assign]
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.put_sandbox({"id": "small", "owner": "a", "status": "running"})
        assert store.loop_commits == 1
        assert other.execute("SELECT count(*) FROM sandboxes WHERE id = 'small'").fetchone()[0] == 1
        big = {"id": "e1", "sandbox_id": "small", "status": "completed",
               "outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * (store.loop_commit_bytes + 1)}]}
        await store.put_execution(big)  # (past checkpoint_pages: a checkpoint follows it on the writer thread)
        assert store.loop_commits == 1
        # Behind that checkpoint, a small write goes to the writer thread too, and lands after it.
        followed = asyncio.ensure_future(store.put_sandbox({"id": "small", "owner": "a", "status": "paused"}))
        await until(lambda: store._writer._work_queue.qsize(), what="the write queued behind the checkpoint")
        held.set()
        await followed
        assert store.checkpoints == 1 and store.loop_commits == 1
        assert other.execute("SELECT count(*) FROM executions").fetchone()[0] == 1
        await store.put_sandbox({"id": "small", "owner": "a", "status": "running"})
        assert store.loop_commits == 2
        assert (await store.get_sandbox("small"))["status"] == "running"
        # A prune's values are small, but it may delete any number of rows: never on the loop.
        assert await store.prune_events(before=1e12) == 0 and store.loop_commits == 2
        await store.put_sandbox({"id": "ended", "owner": "a", "status": "terminated",
                                 "terminated_at": "2020-01-01T00:00:00Z"})
        assert store.loop_commits == 3
        assert await store.prune_history(statuses=["terminated"], before=1e12, limit=10) == 1
        assert store.loop_commits == 3 and await store.get_sandbox("ended") is None
    finally:
        other.close()
        await store.close()
    full = SQLiteStore(str(tmp_path / "full.db"), synchronous="FULL")
    await full.open()
    try:
        await full.put_sandbox({"id": "s", "owner": "a", "status": "running"})
        assert full.loop_commit_bytes == 0 and full.loop_commits == 0
        assert (await full.get_sandbox("s"))["status"] == "running"
    finally:
        await full.close()


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


async def test_a_database_from_before_migrations_is_adopted_as_version_1(tmp_path: Any) -> None:
    path = str(tmp_path / "g.db")
    with sqlite3.connect(path, isolation_level=None) as db:  # the schema gateways made before migrations
        for statement in migrations.MIGRATIONS[0].sqlite:
            db.execute(statement)
        db.execute("INSERT INTO sandboxes (id, owner, status, record) VALUES ('s', 'a', 'running', "
                   "'{\"id\": \"s\", \"owner\": \"a\", \"status\": \"running\"}')")
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.schema_version() == migrations.LATEST
        assert (await store.get_sandbox("s"))["owner"] == "a"
    finally:
        await store.close()


async def test_checkpoints_run_beside_commits_and_keep_the_wal_small(tmp_path: Any) -> None:
    """Commits leave WAL checkpoints to a job of their own, after them (a commit holding a big output
    neither reads the WAL back nor waits for a sync), which keeps the WAL to about its threshold:
    40 outputs of 256 KiB (10 MiB in all) never grow it past a few of them."""
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path, checkpoint_pages=200)  # 800 KiB
    await store.open()
    try:
        writer = store._db
        assert writer is not None
        assert await store._on(store._writer, lambda: writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        text = "x" * (256 * 1024)
        largest = 0
        for i in range(40):
            await store.put_execution({"id": f"e{i}", "sandbox_id": "s", "status": "completed",
                                       "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]})
            largest = max(largest, os.path.getsize(path + "-wal"))
        await until(lambda: store.checkpoints >= 10, what="checkpoints")
        assert store.last_checkpoint is not None and store.last_checkpoint[0] == 0, "a passive checkpoint never waits"
        assert largest < 4 * 1024 * 1024, f"the WAL grew to {largest} bytes"
        for i in (0, 39):
            assert (await store.get_execution(f"e{i}"))["outputs"][0]["text"] == text
    finally:
        await store.close()
    # What the checkpoints copied is in the database file itself: it reads without its WAL.
    os.remove(path + "-wal") if os.path.exists(path + "-wal") else None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM executions").fetchone()[0] == 40
