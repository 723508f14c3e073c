"""The record operations both SQL stores share, over a backend's commit and fetch.

A backend (``sqlite.py``, ``postgres.py``) connects, commits a batch of writes in one
transaction off the event loop, and fetches rows; this class turns the store interface into
statements (written with ``?`` placeholders), sends every write through one ``WriteQueue`` and
makes every read wait for the writes before it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Collection, Hashable, Sequence
from typing import Any

from gateway import timestamps
from gateway.store import codec, history, leasing, migrations, statements
from gateway.store.base import Budget, Record, Store, Written
from gateway.store.writes import AsJSON, Outcome, Statement, Write, WriteQueue

UNFINISHED = ("queued", "running")
#: ``LIMIT`` when there is none (SQLite needs one before ``OFFSET``).
NO_LIMIT = 1 << 62

UPSERT_SANDBOX = f"INSERT INTO sandboxes ({statements.SANDBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?)" + statements.UPSERT_TAIL
UPSERT_EXECUTION = (
    "INSERT INTO executions (id, sandbox_id, status, record) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
    "SET status = excluded.status, record = excluded.record"
)


def marks(values: Collection[object]) -> str:
    """As many ``?`` placeholders as ``values``, for ``IN (...)`` (``NULL``, matching nothing, for none)."""
    return ", ".join("?" * len(values)) or "NULL"


def _where(clauses: list[str], params: list[Any], *, owner: str | None, column: str,
           values: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause: ``clauses`` and, if given, the owner and ``column IN values``."""
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    if values:
        clauses.append(f"{column} IN ({marks(values)})")
        params.extend(values)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), tuple(params)


def sandbox_filter(owner: str | None, statuses: list[str] | None) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` clause (and its parameters) of a sandbox listing."""
    return _where([], [], owner=owner, column="status", values=statuses)


class SQLStore(Store):
    #: The SQL expression that orders a table's rows as they were first inserted.
    order = "rowid"
    #: The database's clock, in epoch seconds (leases are judged by it, never by a replica's own clock).
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    #: What a ``SELECT`` ends with to take the rows it reads, skipping those another transaction holds
    #: (``gateway.store.history``; none in SQLite, whose writers never run at once).
    skip_locked = ""

    def __init__(self, *, max_backoff: float = 5.0, close_timeout: float = 10.0) -> None:
        self.close_timeout = close_timeout
        self._writes = WriteQueue(self._commit, name=self.kind, describe=self._describe_failure,
                                  max_backoff=max_backoff)

    # -- what a backend provides -------------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    def _commit(self, batch: list[Write]) -> Awaitable[list[Outcome]]:
        """Run ``batch`` in one transaction, off the loop (``WriteQueue`` says what to return and raise)."""

    @abc.abstractmethod
    async def _fetch_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of a query; ``StoreUnavailable`` if the database cannot answer."""

    @abc.abstractmethod
    async def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Record]:
        """The first column of each row, decoded from JSON off the loop."""

    def _describe_failure(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    # -- the store ---------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._connect()
        except BaseException:
            await self._disconnect()
            raise
        self._writes.start()

    async def close(self) -> None:
        await self._writes.stop(self.close_timeout)
        await self._disconnect()

    async def flush(self) -> None:
        await self._writes.settled()

    @property
    def problem(self) -> str | None:
        return self._writes.problem

    def held_writes(self) -> int:
        return self._writes.held()

    async def schema_version(self) -> int:
        """The version of ``gateway.store.migrations`` the database is at."""
        rows = await self._rows(migrations.CURRENT_VERSION)
        return int(rows[0][0])

    def _write(self, statements: list[Statement], key: Hashable | None = None, *,
               bulk: bool = False) -> asyncio.Future[int]:
        return self._writes.add(Write(statements, key, bulk=bulk))

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        await self._writes.caught_up()
        return await self._fetch_rows(sql, params)

    async def _records(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        await self._writes.caught_up()
        return await self._fetch_records(sql, params)

    async def _record(self, sql: str, params: tuple[Any, ...]) -> Record | None:
        records = await self._records(sql, params)
        return records[0] if records else None

    # -- sandboxes ---------------------------------------------------------------------------------

    def put_sandbox(self, record: Record, *, events: Sequence[Record] = ()) -> Written:
        params = statements.sandbox_values(record)
        # A write with events is never replaced by a later version of the record: its events would go.
        return self._write([(UPSERT_SANDBOX, params), *map(statements.event_insert, events)],
                           key=None if events else ("sandbox", record["id"]))

    def record_number(self, field: str) -> str:
        """SQL reading ``resources.<field>`` of a sandbox's JSON ``record`` as a number (SQLite's JSON1)."""
        return f"json_extract(record, '$.resources.{field}')"

    def record_text(self, *path: str) -> str:
        """SQL reading the string at ``path`` of a sandbox's JSON ``record`` (NULL if there is none)."""
        return f"json_extract(record, '$.{'.'.join(path)}')"

    def put_sandbox_within(self, record: Record, budgets: Sequence[Budget], *,
                           events: Sequence[Record] = ()) -> Awaitable[bool]:
        within = statements.sandbox_within(record, budgets, events, self.record_number)
        return _counted(self._write([*self._owner_lock(record["owner"]), *within]))

    async def owner_usage(self, owner: str, *, exclude: str | None = None) -> dict[str, tuple[int, float, int]]:
        rows = await self._rows(
            f"SELECT status, COUNT(*), COALESCE(SUM({self.record_number('cpu')}), 0), "
            f"COALESCE(SUM({self.record_number('memory_mb')}), 0) FROM sandboxes "
            "WHERE owner = ? AND id <> ? AND status NOT IN ('terminated') GROUP BY status",
            (owner, exclude or ""),
        )
        return {str(status): (int(count), float(cpu), int(memory)) for status, count, cpu, memory in rows}

    async def put_sandbox_if(self, record: Record, *, statuses: Collection[str]) -> bool:
        sql = (f"UPDATE sandboxes SET owner = ?, status = ?, ended_at = ?, record = ? "
               f"WHERE id = ? AND status IN ({marks(statuses)})")
        params = (*statements.sandbox_values(record)[1:], record["id"], *statuses)
        return bool(await self._write([(sql, params)]))

    def _owner_lock(self, owner: str) -> list[Statement]:
        """Statements that serialize, until the transaction ends, the quota-checked writes of ``owner``.

        None in SQLite: ``BEGIN IMMEDIATE`` already serializes every writer.
        """
        return []

    async def get_sandbox(self, sandbox_id: str) -> Record | None:
        return await self._record("SELECT record FROM sandboxes WHERE id = ?", (sandbox_id,))

    async def list_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None,
                             limit: int | None = None, offset: int = 0) -> list[Record]:
        where, params = sandbox_filter(owner, statuses)
        sql = f"SELECT record FROM sandboxes {where} ORDER BY {self.order} LIMIT ? OFFSET ?"
        return await self._records(sql, (*params, NO_LIMIT if limit is None else limit, offset))

    async def count_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None) -> int:
        where, params = sandbox_filter(owner, statuses)
        rows = await self._rows(f"SELECT COUNT(*) FROM sandboxes {where}", params)
        return int(rows[0][0])

    # -- executions --------------------------------------------------------------------------------

    def put_execution(self, record: Record, *, events: Sequence[Record] = ()) -> Written:
        params = (record["id"], record["sandbox_id"], record["status"], AsJSON(record))
        return self._write([(UPSERT_EXECUTION, params), *map(statements.event_insert, events)],
                           key=None if events else ("execution", record["id"]))

    def put_execution_within(self, record: Record, owner: str, *, since: float, limit: int,
                             at: float) -> Awaitable[bool]:
        within = statements.execution_within(record, owner, since=since, limit=limit, at=at)
        return _counted(self._write([*self._owner_lock(owner), *within]))

    async def recent_executions(self, owner: str, *, since: float) -> tuple[int, float | None]:
        rows = await self._rows("SELECT COUNT(*), MIN(at) FROM execution_starts WHERE owner = ? AND at >= ?",
                                (owner, since))
        count, oldest = rows[0]
        return int(count), None if oldest is None else float(oldest)

    async def get_execution(self, execution_id: str) -> Record | None:
        return await self._record("SELECT record FROM executions WHERE id = ?", (execution_id,))

    async def list_executions(self, sandbox_id: str, *, limit: int | None = None,
                              offset: int = 0) -> list[Record]:
        return await self._records(
            f"SELECT record FROM executions WHERE sandbox_id = ? ORDER BY {self.order} LIMIT ? OFFSET ?",
            (sandbox_id, NO_LIMIT if limit is None else limit, offset),
        )

    async def list_unfinished_executions(self, sandbox_id: str | None = None) -> list[Record]:
        if sandbox_id is None:
            return await self._records(
                f"SELECT record FROM executions WHERE status IN (?, ?) ORDER BY {self.order}", UNFINISHED
            )
        return await self._records(f"SELECT record FROM executions WHERE sandbox_id = ? AND status IN (?, ?) "
                                   f"ORDER BY {self.order}", (sandbox_id, *UNFINISHED))

    # -- events ------------------------------------------------------------------------------------

    async def list_events(self, *, after: int, owner: str | None = None, limit: int = 500,
                          types: Sequence[str] | None = None) -> list[Record]:
        where, params = _where(["seq > ?"], [after], owner=owner, column="type", values=types)
        rows = await self._rows(f"SELECT {statements.EVENT_COLUMNS} FROM events {where} ORDER BY seq LIMIT ?",
                                (*params, limit))
        return [statements.event_record(row, codec.decode) for row in rows]

    async def last_event_id(self) -> int:
        rows = await self._rows("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(rows[0][0])

    def prune_events(self, *, before: float) -> Awaitable[int]:
        return self._write([("DELETE FROM events WHERE at < ?", (before,))], bulk=True)

    async def prune_history(self, *, statuses: Sequence[str], before: float, limit: int) -> int:
        if not statuses:
            return 0
        rows = await self._rows(history.oldest(self.now, len(statuses)), (*statuses, before, limit))
        if not rows:
            return 0
        ids = [str(row[0]) for row in rows]
        return await self._write(history.forget(self.now, self.skip_locked, ids, statuses, before), bulk=True)

    async def webhook_cursor(self, url: str) -> int | None:
        rows = await self._rows("SELECT seq FROM webhook_cursors WHERE url = ?", (url,))
        return int(rows[0][0]) if rows else None

    def set_webhook_cursor(self, url: str, event_id: int) -> Written:
        return self._write([("INSERT INTO webhook_cursors (url, seq) VALUES (?, ?) "
                             "ON CONFLICT (url) DO UPDATE SET seq = excluded.seq", (url, event_id))],
                           key=("webhook", url))

    # -- replicas and leases -----------------------------------------------------------------------

    def beat(self, replica_id: str, address: str, ttl: float) -> Awaitable[bool]:
        renewed = self._write([leasing.renew_if_alive(self.now, replica_id, address, ttl)])
        self._write([leasing.beat(self.now, replica_id, address, ttl)])  # (the same transaction)
        return _counted(renewed)

    def stop_beating(self, replica_id: str) -> Written:
        return self._write([leasing.stop(replica_id)])

    async def list_replicas(self) -> list[Record]:
        rows = await self._rows(leasing.replicas(self.now))
        return [{"id": id_, "address": address, "started_at": started, "alive": bool(alive),
                 "expires_in": float(left)} for id_, address, started, alive, left in rows]

    def claim_lease(self, sandbox_id: str, holder: str) -> Awaitable[bool]:
        return _whether(self._write([leasing.claim(self.now, sandbox_id, holder)]))

    def drop_lease(self, sandbox_id: str, holder: str) -> Written:
        return self._write([leasing.drop(sandbox_id, holder)])

    async def get_lease(self, sandbox_id: str) -> Record | None:
        rows = await self._rows(leasing.lease(self.now), (sandbox_id,))
        if not rows:
            return None
        holder, address, alive, left = rows[0]
        return {"holder": holder, "address": address, "alive": bool(alive), "expires_in": float(left)}

    async def leases_of(self, holder: str) -> list[str]:
        return [str(row[0]) for row in await self._rows(leasing.held_by(), (holder,))]

    async def runtime_ids_in_use(self) -> set[str]:
        runtime_id = self.record_text("kernel", "runtime_id")
        rows = await self._rows(f"SELECT {runtime_id} FROM sandboxes WHERE status <> 'terminated' "
                                f"AND {runtime_id} IS NOT NULL AND {runtime_id} <> id")
        return {str(row[0]) for row in rows}

    async def unheld_sandboxes(self, statuses: Sequence[str]) -> list[Record]:
        return await self._records(leasing.unheld(self.now, len(statuses), self.order), tuple(statuses))

    # -- API keys ----------------------------------------------------------------------------------

    def add_api_key(self, user: str, key_hash: str) -> Written:
        return self._write([('INSERT INTO api_keys (key_hash, "user", created_at) VALUES (?, ?, ?)',
                             (key_hash, user, timestamps.to_iso(timestamps.now())))])

    def revoke_api_keys(self, *, key_hash: str | None = None, user: str | None = None) -> Awaitable[int]:
        if key_hash is None and user is None:
            raise ValueError("revoke which keys? give a key or a user")
        where, params = ("key_hash = ?", (key_hash,)) if key_hash is not None else ('"user" = ?', (user,))
        return self._write([(f"DELETE FROM api_keys WHERE {where}", params)])

    async def find_api_key(self, key_hash: str) -> str | None:
        rows = await self._rows('SELECT "user" FROM api_keys WHERE key_hash = ?', (key_hash,))
        return str(rows[0][0]) if rows else None

    async def count_api_keys(self) -> int:
        rows = await self._rows("SELECT COUNT(*) FROM api_keys")
        return int(rows[0][0])


def _whether(written: asyncio.Future[int]) -> asyncio.Future[bool]:
    """Whether a conditional write wrote, as a future (so a caller may also leave it un-awaited)."""
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(done: asyncio.Future[int]) -> None:
        if answer.done():
            return
        if done.cancelled():
            answer.cancel()
        elif done.exception() is not None:
            answer.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            answer.set_result(bool(done.result()))

    written.add_done_callback(settle)
    return answer


async def _counted(written: Awaitable[int]) -> bool:
    """Whether a conditional write wrote (its last statement touched a row)."""
    return bool(await written)
