"""The PostgreSQL store, for gateways that share their state: ``--store-url=postgresql://...``.

    store = PostgresStore("postgresql://gateway@db.internal:5432/gateway")
    await store.open()

asyncpg over a small pool of connections, on the event loop (network I/O never blocks it). The
JSON of records is encoded on a thread of the store's, and large results are decoded there
too, so neither holds the loop (``gateway.store.codec``). Each batch of writes is one
transaction on one connection; reads use the others and see every committed write, so a read
after a write sees it. If one write of a batch violates a constraint, the batch is run again
with a savepoint per write, so that write fails alone.

Durability is PostgreSQL's: a commit is on the server's disk when it returns (with the
default ``synchronous_commit=on``). Lost connections, a server that restarts or refuses
connections, a full disk or a read-only standby fail the batch, which is retried until the
server takes it. The URL may carry a password; libpq's variables (``PGPASSWORD``, ``PGSSLMODE``,
...) and ``~/.pgpass`` work as well, and nothing of the URL is logged.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway import timestamps
from gateway.errors import StoreUnavailable
from gateway.store import codec, migrations, statements
from gateway.store.base import Record
from gateway.store.sql import SQLStore
from gateway.store.writes import Outcome, Statement, Write, prepare

#: Errors that are one write's own (a constraint, a value PostgreSQL rejects, JSON that cannot be
#: encoded): that write fails alone. Any other error fails the batch, which is retried.
RECORD_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError,
                 TypeError, ValueError, OverflowError)
#: Errors that mean the server cannot be reached or cannot answer right now.
UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.InternalClientError, asyncpg.exceptions.OperatorInterventionError,
               asyncpg.exceptions.InsufficientResourcesError)
#: Advisory lock keys: one for migrations, the namespace of the per-owner quota locks, and the outbox's.
MIGRATIONS_LOCK = 0x636F6465  # "code"
OWNER_LOCKS = 0x6F776E72  # "ownr"
EVENTS_LOCK = 0x65766E74  # "evnt"
#: Results larger than this (characters) are decoded on the store's thread, not the loop.
DECODE_OFF_LOOP = 1 << 16


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our statements have no other ``?``)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))


def row_count(status: str) -> int:
    """The row count in a command status such as ``INSERT 0 1`` or ``UPDATE 2``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresStore(SQLStore):
    kind = "postgresql"
    order = "seq"
    now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 4,
                 command_timeout: float = 30.0, max_backoff: float = 5.0,
                 close_timeout: float = 10.0) -> None:
        super().__init__(max_backoff=max_backoff, close_timeout=close_timeout)
        self.url = url
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool[Any] | None = None
        self._codec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-codec")

    async def _connect(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_connections,
                                               max_size=self.max_connections,
                                               command_timeout=self.command_timeout)
        async with self._pool.acquire() as conn:
            await self._migrate(conn)

    async def _migrate(self, conn: PoolConnectionProxy[Any]) -> None:
        """Apply the missing migrations, one transaction each, under a lock other replicas wait for."""
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATIONS_LOCK)
                await conn.execute(migrations.CREATE_TABLE)
                todo = migrations.pending(await conn.fetchval(migrations.CURRENT_VERSION))
                if todo:
                    for statement in todo[0].statements("postgresql"):
                        await conn.execute(statement)
                    await conn.execute(numbered(migrations.RECORD_VERSION), todo[0].version, todo[0].name,
                                       timestamps.to_iso(timestamps.now()))
            if len(todo) <= 1:
                return

    async def _disconnect(self) -> None:
        if self._pool is not None:
            try:
                async with asyncio.timeout(self.close_timeout):  # (wait_for can swallow a cancellation)
                    await self._pool.close()
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
        self._codec.shutdown(wait=True)

    def _acquire(self) -> Any:
        assert self._pool is not None, "store is not open"
        return self._pool.acquire(timeout=self.command_timeout)

    def record_text(self, *path: str) -> str:
        return f"(CAST(record AS json) #>> '{{{','.join(path)}}}')"

    def record_number(self, field: str) -> str:
        return f"CAST(CAST(record AS json) -> 'resources' ->> '{field}' AS DOUBLE PRECISION)"

    def _owner_lock(self, owner: str) -> list[Statement]:
        return [("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))", (OWNER_LOCKS, owner))]

    # -- writes ----------------------------------------------------------------------------------

    async def _commit(self, batch: list[Write]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._codec, prepare, batch, RECORD_ERRORS)
        numbers_events = any(sql.startswith(statements.INSERT_EVENT) for item in prepared
                             if not isinstance(item, BaseException) for sql, _ in item)
        async with self._acquire() as conn:
            try:
                async with conn.transaction():
                    if numbers_events:
                        await _number_events_in_commit_order(conn)
                    return [item if isinstance(item, BaseException) else await _apply(conn, item)
                            for item in prepared]
            except RECORD_ERRORS:
                pass  # a write at fault aborted the transaction: again, each write in a savepoint
            outcomes: list[Outcome] = []
            async with conn.transaction():
                if numbers_events:
                    await _number_events_in_commit_order(conn)
                for item in prepared:
                    if isinstance(item, BaseException):
                        outcomes.append(item)
                        continue
                    try:
                        async with conn.transaction():
                            outcomes.append(await _apply(conn, item))
                    except RECORD_ERRORS as exc:
                        outcomes.append(exc)
            return outcomes

    # -- reads -----------------------------------------------------------------------------------

    async def _fetch_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            async with self._acquire() as conn:
                rows = await conn.fetch(numbered(sql), *params)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"the database cannot be read ({self._describe_failure(exc)})") from exc
        return [tuple(row) for row in rows]

    async def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Record]:
        texts = [row[0] for row in await self._fetch_rows(sql, params)]
        if sum(len(text) for text in texts) <= DECODE_OFF_LOOP:
            return [codec.decode(text) for text in texts]
        return await asyncio.get_running_loop().run_in_executor(self._codec, _decode_all, texts)

    def _describe_failure(self, exc: BaseException) -> str:
        described = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, asyncpg.InternalClientError):
            # asyncpg's protocol state after the server went away mid-operation ("cannot switch to
            # state 15; another operation is in progress"): name what happened.
            return f"the connection to the server broke during an operation ({described})"
        return described


async def _number_events_in_commit_order(conn: PoolConnectionProxy[Any]) -> None:
    """Serialize the transactions that write events, across every gateway sharing the database.

    An event's ``seq`` is taken when it is inserted, not when its transaction commits: two
    transactions could commit in the other order, and a reader resuming after the higher number
    (an SSE client's ``Last-Event-ID``, a webhook cursor) would skip the lower one for ever.
    Holding one lock from before the first event's insert until the commit makes the numbers
    follow commit order. It is taken first in the transaction, before any per-owner quota lock,
    so two writers never wait for each other's locks in opposite orders.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)


async def _apply(conn: PoolConnectionProxy[Any], write: list[Statement]) -> int:
    count = 0
    for sql, params in write:
        count = row_count(await conn.execute(numbered(sql), *params))
    return count


def _decode_all(texts: list[str]) -> list[Record]:
    return [codec.decode(text) for text in texts]
