"""The embedded default store: one SQLite file in the data directory.

    store = SQLiteStore("/var/lib/code-gateway/gateway.db")
    await store.open()

Writes are write-behind and cheap: ``put_*`` queues the record, and once per event-loop
iteration everything queued is committed in one transaction on the loop's own thread (in WAL
mode with ``synchronous=NORMAL`` a commit does not wait for the disk: tens of microseconds,
less than handing the work to another thread). Reads run on a worker thread with a connection
of their own, so a large query never stalls the loop; each read first commits what is queued,
so the gateway always reads what it wrote. ``flush()`` commits at once. WAL mode also lets
other processes (``code-gateway keys create``) write while the gateway runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
UPSERT_SANDBOX = (
    "INSERT INTO sandboxes (id, owner, status, record) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record"
)
UPSERT_EXECUTION = (
    "INSERT INTO executions (id, sandbox_id, status, record) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record"
)


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a power cut may lose the last commits, but never corrupts the file.
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class SQLiteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reads")
        self._db: sqlite3.Connection | None = None
        self._reads: sqlite3.Connection | None = None
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._commit_soon: asyncio.Handle | None = None

    async def open(self) -> None:
        self._db = connect(self.path)
        self._db.executescript(SCHEMA)
        self._reads = await self._in_thread(connect, self.path)

    async def close(self) -> None:
        self.commit()
        if self._reads is not None:
            await self._in_thread(self._reads.close)
            self._reads = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self._thread.shutdown(wait=True)

    async def flush(self) -> None:
        self.commit()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- writes ----------------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self._pending.append((sql, params))
        if self._commit_soon is None:
            self._commit_soon = asyncio.get_running_loop().call_soon(self.commit)

    def commit(self) -> None:
        """Commit every queued write now, in one transaction."""
        if self._commit_soon is not None:
            self._commit_soon.cancel()
            self._commit_soon = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        assert self._db is not None, "store is not open"
        try:
            self._db.execute("BEGIN")
            for sql, params in batch:
                try:
                    self._db.execute(sql, params)
                except sqlite3.IntegrityError:  # one bad record must not cost the others
                    log.exception("store: a record could not be written")
            self._db.execute("COMMIT")
        except sqlite3.Error:  # e.g. the disk is full: keep the connection usable for what follows
            log.exception("store: %d records could not be written", len(batch))
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    # -- reads -----------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self._reads is not None, "store is not open"
        return self._reads.execute(sql, params).fetchall()

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.commit()  # read what was written
        return await self._in_thread(self._query, sql, params)

    async def _records(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        return [json.loads(row[0]) for row in await self._rows(sql, params)]

    async def _record(self, sql: str, params: tuple[Any, ...]) -> Record | None:
        records = await self._records(sql, params)
        return records[0] if records else None

    # -- sandboxes -------------------------------------------------------------------------------

    async def put_sandbox(self, record: Record) -> None:
        self._write(UPSERT_SANDBOX, (record["id"], record["owner"], record["status"], json.dumps(record)))

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
        self._write(UPSERT_EXECUTION, (record["id"], record["sandbox_id"], record["status"], json.dumps(record)))

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
        self.commit()
        assert self._db is not None, "store is not open"
        self._db.execute(  # at once, not write-behind: the key is printed only if it is stored
            "INSERT INTO api_keys (key_hash, user, created_at) VALUES (?, ?, ?)",
            (key_hash, user, timestamps.to_iso(timestamps.now())),
        )

    async def find_api_key(self, key_hash: str) -> str | None:
        rows = await self._rows("SELECT user FROM api_keys WHERE key_hash = ?", (key_hash,))
        return rows[0][0] if rows else None

    async def count_api_keys(self) -> int:
        rows = await self._rows("SELECT COUNT(*) FROM api_keys")
        return int(rows[0][0])
