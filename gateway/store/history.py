"""SQL of history retention, shared by the SQL stores: forgetting long-ended sandboxes, executions and all.

A sandbox may be forgotten once its status is one of the final ones the caller names, its
``ended_at`` (``statements.SANDBOX_COLUMNS``) is before the cutoff, and no replica alive holds its
lease (one that claims an ended sandbox drops the lease again at once; a lease left by a replica
that died goes with the sandbox). The store reads the ids of a batch of them, longest ended first
(``oldest``), then removes those in one write (``forget``): their executions, their leases, their
records, each statement re-checking the condition on those ids, so a sandbox is removed whole or
not at all, and nothing else is.

Every replica sharing a database prunes, and a pass is safe to run twice: a delete of what is
gone deletes nothing. Two passes at once never wait for each other's rows: SQLite serializes
writers (the second finds nothing left), and in PostgreSQL each statement takes the sandbox rows
it works on with ``lock`` (``FOR UPDATE SKIP LOCKED``), skipping those another pass holds, so
each removes its own sandboxes with their own executions, and no two deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store import leasing
from gateway.store.writes import Statement


def ended(now: str, statuses: int) -> str:
    """The condition that a ``sandboxes`` row is in ``statuses`` (that many ``?``), ended before the cutoff
    (one ``?`` more) and is held by no replica alive (``now``: the database's clock)."""
    return (f"status IN ({', '.join('?' * statuses)}) AND ended_at < ? "
            f"AND NOT {leasing.held(now, 'sandboxes.id')}")


def oldest(now: str, statuses: int) -> str:
    """The ids of the sandboxes that may be forgotten, longest ended first; parameters: ``statuses``, the
    cutoff, the limit."""
    return f"SELECT id FROM sandboxes WHERE {ended(now, statuses)} ORDER BY ended_at, id LIMIT ?"


def forget(now: str, lock: str, ids: Sequence[str], statuses: Sequence[str],
           before: float) -> list[Statement]:
    """Remove the sandboxes ``ids`` that still may be forgotten, with their executions and leases: the last
    statement's row count is how many sandboxes went."""
    chosen = (f"SELECT id FROM sandboxes WHERE id IN ({', '.join('?' * len(ids))}) "
              f"AND {ended(now, len(statuses))}{lock}")
    params = (*ids, *statuses, before)
    return [(f"DELETE FROM executions WHERE sandbox_id IN ({chosen})", params),
            (f"DELETE FROM leases WHERE sandbox_id IN ({chosen})", params),
            (f"DELETE FROM sandboxes WHERE id IN ({chosen})", params)]
