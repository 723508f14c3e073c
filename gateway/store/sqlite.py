"""The embedded default store: one SQLite file in the data directory, used from one worker thread.

    store = SQLiteStore("/var/lib/code-gateway/gateway.db")
    await store.open()

One thread owns the connection, so writes are serialized in submission order without locks,
and the event loop never blocks on disk. WAL mode lets other processes (``code-gateway keys
create``) write while the gateway runs.

Record writes (``put_*``) are write-behind: they are handed to that thread (which also does the
JSON encoding) and not waited for, so storing an execution costs its request nothing. Reads
queue behind every earlier write, so the gateway always reads what it wrote; ``flush()`` (and
``close()``) wait until everything handed over is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gateway import timestamps
from gateway.store.base import Record, Store

T = TypeVar("T")
log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_by_owner ON sandboxes (owner);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_by_sandbox ON executions (sandbox_id);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

UNFINISHED = ("queued", "running")


def _log_write_failure(future: Future[None]) -> None:
    if future.exception() is not None:
        log.error("store: records could not be written", exc_info=future.exception())


class SQLiteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple[Any, ...], Record]] = []
        self._draining = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, but never corrupts the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)  # after every queued write
            self._db = None
        self._thread.shutdown(wait=True)

    async def flush(self) -> None:
        await self._call(lambda: None)

    def _write_behind(self, sql: str, key: tuple[Any, ...], record: Record) -> None:
        # Writes made in one go (an execution's record and its sandbox's) share one hand-over to
        # the thread and one transaction: each hand-over costs a GIL round trip.
        with self._lock:
            self._pending.append((sql, key, record))
            if self._draining:
                return
            self._draining = True
        self._thread.submit(self._drain).add_done_callback(_log_write_failure)

    def _drain(self) -> None:
        assert self._db is not None, "store is not open"
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            try:
                self._db.execute("BEGIN")
                for sql, key, record in batch:
                    try:
                        self._db.execute(sql, (*key, json.dumps(record)))
                    except sqlite3.IntegrityError:  # one bad record must not cost the others
                        log.exception("store: record %s could not be written", key[0])
                self._db.execute("COMMIT")
            except Exception:  # e.g. the disk is full: keep the connection usable for what follows
                log.exception("store: %d records could not be written", len(batch))
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None, "store is not open"
        return self._db.execute(sql, params).fetchall()

    async def _records(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        rows = await self._call(self._execute, sql, params)
        return [json.loads(row[0]) for row in rows]

    async def _record(self, sql: str, params: tuple[Any, ...]) -> Record | None:
        records = await self._records(sql, params)
        return records[0] if records else None

    # -- sandboxes -------------------------------------------------------------------------------

    async def put_sandbox(self, record: Record) -> None:
        self._write_behind(
            "INSERT INTO sandboxes (id, owner, status, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
            (record["id"], record["owner"], record["status"]), record,
        )

    async def get_sandbox(self, sandbox_id: str) -> Record | None:
        return await self._record("SELECT record FROM sandboxes WHERE id = ?", (sandbox_id,))

    async def list_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None) -> list[Record]:
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if statuses:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._records(f"SELECT record FROM sandboxes {where} ORDER BY rowid", tuple(params))

    # -- executions ------------------------------------------------------------------------------

    async def put_execution(self, record: Record) -> None:
        self._write_behind(
            "INSERT INTO executions (id, sandbox_id, status, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
            (record["id"], record["sandbox_id"], record["status"]), record,
        )

    async def get_execution(self, execution_id: str) -> Record | None:
        return await self._record("SELECT record FROM executions WHERE id = ?", (execution_id,))

    async def list_executions(self, sandbox_id: str, *, limit: int | None = None, offset: int = 0) -> list[Record]:
        return await self._records(
            "SELECT record FROM executions WHERE sandbox_id = ? ORDER BY rowid LIMIT ? OFFSET ?",
            (sandbox_id, -1 if limit is None else limit, offset),
        )

    async def list_unfinished_executions(self) -> list[Record]:
        return await self._records(
            "SELECT record FROM executions WHERE status IN (?, ?) ORDER BY rowid", UNFINISHED
        )

    # -- API keys --------------------------------------------------------------------------------

    async def add_api_key(self, user: str, key_hash: str) -> None:
        await self._call(
            self._execute,
            "INSERT INTO api_keys (key_hash, user, created_at) VALUES (?, ?, ?)",
            (key_hash, user, timestamps.to_iso(timestamps.now())),
        )

    async def find_api_key(self, key_hash: str) -> str | None:
        rows = await self._call(self._execute, "SELECT user FROM api_keys WHERE key_hash = ?", (key_hash,))
        return rows[0][0] if rows else None

    async def count_api_keys(self) -> int:
        rows = await self._call(self._execute, "SELECT COUNT(*) FROM api_keys", ())
        return int(rows[0][0])
