"""SQL of the lifecycle's records, shared by the SQL stores: the event outbox, and writes within quotas.

Statements use ``?`` placeholders. Where a backend's SQL differs (reading a number out of a JSON
record), the caller passes its own expression (``SQLStore.record_number``).

- **Outbox.** An event is an ``INSERT INTO events`` in the same write as the record it describes,
  so both commit in one transaction or neither does; ``seq`` numbers the events in commit order.
- **Quotas.** ``INSERT … SELECT … WHERE <the owner's other sandboxes leave room>``: the check
  and the write are one statement, so two writes racing for the last slot cannot both pass: the
  store's write transactions are serialized (SQLite's ``BEGIN IMMEDIATE``; the PostgreSQL store
  takes a per-owner advisory lock first, ``SQLStore._owner_lock``, as READ COMMITTED alone lets
  two such inserts pass together). An event of a refused write is refused with it: it carries the
  same condition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway import timestamps
from gateway.store.base import Budget, Record
from gateway.store.writes import AsJSON, Statement

#: A sandbox's row: ``ended_at`` is its record's ``terminated_at`` in epoch seconds (NULL while it lives),
#: a column of its own so that history retention finds the long-ended ones by an index.
SANDBOX_COLUMNS = "id, owner, status, ended_at, record"
UPSERT_TAIL = (" ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, status = excluded.status, "
               "ended_at = excluded.ended_at, record = excluded.record")
EXECUTION_TAIL = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record"
INSERT_EVENT = "INSERT INTO events (at, type, time, sandbox_id, owner, data) SELECT ?, ?, ?, ?, ?, ?"
EVENT_COLUMNS = "seq, type, time, sandbox_id, owner, data"


def sandbox_values(record: Record) -> tuple[Any, ...]:
    """The values of ``SANDBOX_COLUMNS`` for ``record``."""
    ended = timestamps.from_iso(record.get("terminated_at"))
    return (record["id"], record["owner"], record["status"], ended.timestamp() if ended else None, AsJSON(record))


def event_insert(event: Record, condition: str = "", params: tuple[Any, ...] = ()) -> Statement:
    """The outbox row of ``event`` (written only where ``condition`` holds, if one is given)."""
    at = timestamps.from_iso(event["time"])
    values = (at.timestamp() if at else 0.0, event["type"], event["time"], event["sandbox_id"], event["owner"],
              AsJSON(event.get("data") or {}))
    return (INSERT_EVENT + (f" WHERE {condition}" if condition else ""), values + params)


def event_record(row: tuple[Any, ...], decode: Callable[[Any], Any]) -> Record:
    seq, type_, time, sandbox_id, owner, data = row
    return {"id": str(seq), "type": type_, "time": time, "sandbox_id": sandbox_id, "owner": owner,
            "data": decode(data)}


def room_left(record: Record, budgets: Sequence[Budget], number: Callable[[str], str]) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition (and its parameters) under which ``record`` fits the budgets of its status."""
    clauses: list[str] = []
    params: list[Any] = []
    resources = record.get("resources") or {}
    for budget in budgets:
        if record["status"] not in budget.statuses:
            continue
        others = (f"FROM sandboxes WHERE owner = ? AND id <> ? AND status IN ({', '.join('?' * len(budget.statuses))})")
        scope = (record["owner"], record["id"], *budget.statuses)
        if budget.count:
            clauses.append(f"(SELECT COUNT(*) {others}) < ?")
            params += [*scope, budget.count]
        for limit, field in ((budget.cpu, "cpu"), (budget.memory_mb, "memory_mb")):
            if limit:
                clauses.append(f"(SELECT COALESCE(SUM({number(field)}), 0) {others}) + ? <= ?")
                params += [*scope, float(resources.get(field, 0)), float(limit)]
    return (" AND ".join(clauses) or "1 = 1"), tuple(params)


def sandbox_within(record: Record, budgets: Sequence[Budget], events: Sequence[Record],
                   number: Callable[[str], str]) -> list[Statement]:
    """The conditional upsert of a sandbox record and its events; the last statement's row count says if it fit."""
    condition, params = room_left(record, budgets, number)
    upsert = (f"INSERT INTO sandboxes ({SANDBOX_COLUMNS}) SELECT ?, ?, ?, ?, ? WHERE {condition}{UPSERT_TAIL}",
              (*sandbox_values(record), *params))
    return [upsert, *(event_insert(event, condition, params) for event in events)]


def execution_within(record: Record, owner: str, *, since: float, limit: int, at: float) -> list[Statement]:
    """Count the execution as started (if the owner is under ``limit`` since ``since``), then store it if counted."""
    return [
        ("DELETE FROM execution_starts WHERE owner = ? AND at < ?", (owner, since)),
        ("INSERT INTO execution_starts (execution_id, owner, at) SELECT ?, ?, ? "
         "WHERE (SELECT COUNT(*) FROM execution_starts WHERE owner = ? AND at >= ?) < ?",
         (record["id"], owner, at, owner, since, limit)),
        ("INSERT INTO executions (id, sandbox_id, status, record) SELECT ?, ?, ?, ? "
         "WHERE EXISTS (SELECT 1 FROM execution_starts WHERE execution_id = ?)" + EXECUTION_TAIL,
         (record["id"], record["sandbox_id"], record["status"], AsJSON(record), record["id"])),
    ]
