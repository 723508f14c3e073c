"""SQL of replicas' heartbeats and sandbox leases, shared by the SQL stores.

A replica is alive while its row in ``replicas`` has ``expires_at`` in the future, as the
**database's** clock tells (``now`` is the backend's SQL for it), so replicas whose clocks
disagree still agree on who is alive. A lease (``leases``: sandbox id -> holder) is good while
its holder is alive: one heartbeat renews all of a replica's leases at once, whatever their
number. Claiming is one conditional upsert: the row is written only if it is new, already the
claimer's, or its holder is not alive, so two replicas racing for a sandbox cannot both win
(SQLite serializes writers; PostgreSQL's row lock makes the second re-check the condition
against the first's row, whose holder is alive).
"""

from __future__ import annotations

from gateway import timestamps
from gateway.store.writes import Statement


def alive(now: str, replica: str = "r") -> str:
    """The condition that replica row ``replica`` is alive."""
    return f"{replica}.expires_at > {now}"


def renew_if_alive(now: str, replica_id: str, address: str, ttl: float) -> Statement:
    """Extend a heartbeat that has not lapsed (1 row) or do nothing (0: it lapsed, or never was)."""
    return (f"UPDATE replicas SET expires_at = {now} + ?, address = ? WHERE id = ? AND expires_at > {now}",
            (ttl, address, replica_id))


def beat(now: str, replica_id: str, address: str, ttl: float) -> Statement:
    """The heartbeat, whatever came before: the row made or brought back to life."""
    return (f"INSERT INTO replicas (id, address, started_at, expires_at) VALUES (?, ?, ?, {now} + ?) "
            "ON CONFLICT (id) DO UPDATE SET address = excluded.address, expires_at = excluded.expires_at",
            (replica_id, address, timestamps.to_iso(timestamps.now()), ttl))


def stop(replica_id: str) -> Statement:
    """The heartbeat ends now (the row stays: its containers are still known to be ours)."""
    return ("UPDATE replicas SET expires_at = 0 WHERE id = ?", (replica_id,))


def replicas(now: str) -> str:
    return f"SELECT id, address, started_at, {alive(now, 'replicas')}, expires_at - {now} FROM replicas ORDER BY id"


def claim(now: str, sandbox_id: str, holder: str) -> Statement:
    """Take the lease of ``sandbox_id`` if nobody alive holds it (1 row) or leave it (0)."""
    return (f"INSERT INTO leases (sandbox_id, holder, since) VALUES (?, ?, ?) ON CONFLICT (sandbox_id) DO UPDATE "
            f"SET holder = excluded.holder, since = excluded.since WHERE leases.holder = excluded.holder "
            f"OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = leases.holder AND {alive(now)})",
            (sandbox_id, holder, timestamps.to_iso(timestamps.now())))


def drop(sandbox_id: str, holder: str) -> Statement:
    """Give up a lease (only the holder's own)."""
    return ("DELETE FROM leases WHERE sandbox_id = ? AND holder = ?", (sandbox_id, holder))


def lease(now: str) -> str:
    """The holder of one sandbox's lease, its address, whether it is alive, seconds its heartbeat has left."""
    return (f"SELECT l.holder, COALESCE(r.address, ''), COALESCE({alive(now)}, {false()}), "
            f"COALESCE(r.expires_at - {now}, 0) FROM leases l LEFT JOIN replicas r ON r.id = l.holder "
            "WHERE l.sandbox_id = ?")


def held_by() -> str:
    return "SELECT sandbox_id FROM leases WHERE holder = ? ORDER BY sandbox_id"


def held(now: str, sandbox_id: str) -> str:
    """The condition that a replica alive holds the lease of the sandbox whose id is ``sandbox_id`` (SQL)."""
    return (f"EXISTS (SELECT 1 FROM leases l JOIN replicas r ON r.id = l.holder "
            f"WHERE l.sandbox_id = {sandbox_id} AND {alive(now)})")


def unheld(now: str, statuses: int, order: str) -> str:
    """Records of sandboxes in ``statuses`` (that many ``?``) whose lease is missing or whose holder is not
    alive, oldest first (``order``: the column of insertion order)."""
    marks = ", ".join("?" * statuses)
    return (f"SELECT s.record FROM sandboxes s WHERE s.status IN ({marks}) AND NOT {held(now, 's.id')} "
            f"ORDER BY s.{order}")


def false() -> str:
    """A false boolean both dialects accept (SQLite has no FALSE before 3.23, so 0 = 1)."""
    return "(0 = 1)"
