"""Versioned schema migrations, applied when a store opens: one list, a version of SQL per dialect.

Each store records the versions applied in ``schema_migrations`` and, at ``open()``, applies
the missing ones in order, each in its own transaction together with its row there (serialized
across processes: SQLite's write lock, a PostgreSQL advisory lock, so replicas starting at once
do not race). A database newer than this gateway is refused rather than misread.

To change the schema, append a ``Migration`` with the next version and statements for both
dialects, and never edit one that has shipped. Version 3 shows the form::

    Migration(3, "replicas' heartbeats and sandbox leases",
              sqlite=("CREATE TABLE leases (sandbox_id TEXT PRIMARY KEY, holder TEXT NOT NULL, ...)", ...),
              postgresql=(...))

Versions 1 and 2 are the schema SQLite databases had before migrations existed (their
statements are idempotent, so such a database is simply recorded as up to date). Ordering differs by dialect:
SQLite's ``rowid`` is the insertion order; PostgreSQL tables have an identity column ``seq``.
Records are TEXT holding JSON (not ``jsonb``, which rejects the ``\\u0000`` a kernel may print).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        statements: tuple[str, ...] = getattr(self, dialect)
        return statements


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "sandboxes, executions and API keys",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "status TEXT NOT NULL, record TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS sandboxes_by_owner ON sandboxes (owner)",
            "CREATE TABLE IF NOT EXISTS executions (id TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL, "
            "status TEXT NOT NULL, record TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS executions_by_sandbox ON executions (sandbox_id)",
            "CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, user TEXT NOT NULL, "
            "created_at TEXT NOT NULL)",
        ),
        postgresql=(
            "CREATE TABLE sandboxes (seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, id TEXT PRIMARY KEY, "
            "owner TEXT NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL)",
            "CREATE INDEX sandboxes_by_owner ON sandboxes (owner, status)",
            "CREATE INDEX sandboxes_by_status ON sandboxes (status)",
            "CREATE TABLE executions (seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, id TEXT PRIMARY KEY, "
            "sandbox_id TEXT NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL)",
            "CREATE INDEX executions_by_sandbox ON executions (sandbox_id, seq)",
            "CREATE INDEX executions_unfinished ON executions (seq) WHERE status IN ('queued', 'running')",
            'CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, "user" TEXT NOT NULL, '
            "created_at TEXT NOT NULL)",
        ),
    ),
    Migration(
        2, "the event outbox, webhook cursors, execution starts (for quotas)",
        sqlite=(
            "CREATE INDEX IF NOT EXISTS sandboxes_by_owner_status ON sandboxes (owner, status)",
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
            "type TEXT NOT NULL, time TEXT NOT NULL, sandbox_id TEXT NOT NULL, owner TEXT NOT NULL, "
            "data TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS events_by_owner ON events (owner, seq)",
            "CREATE INDEX IF NOT EXISTS events_by_time ON events (at)",
            "CREATE TABLE IF NOT EXISTS webhook_cursors (url TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS execution_starts (execution_id TEXT PRIMARY KEY, "
            "owner TEXT NOT NULL, at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS execution_starts_by_owner ON execution_starts (owner, at)",
        ),
        postgresql=(
            "CREATE TABLE events (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "at DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, time TEXT NOT NULL, sandbox_id TEXT NOT NULL, "
            "owner TEXT NOT NULL, data TEXT NOT NULL)",
            "CREATE INDEX events_by_owner ON events (owner, seq)",
            "CREATE INDEX events_by_time ON events (at)",
            "CREATE TABLE webhook_cursors (url TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
            "CREATE TABLE execution_starts (execution_id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX execution_starts_by_owner ON execution_starts (owner, at)",
        ),
    ),
    Migration(
        3, "replicas' heartbeats and sandbox leases",
        sqlite=(
            "CREATE TABLE replicas (id TEXT PRIMARY KEY, address TEXT NOT NULL, started_at TEXT NOT NULL, "
            "expires_at REAL NOT NULL)",
            "CREATE TABLE leases (sandbox_id TEXT PRIMARY KEY, holder TEXT NOT NULL, since TEXT NOT NULL)",
            "CREATE INDEX leases_by_holder ON leases (holder)",
        ),
        postgresql=(
            "CREATE TABLE replicas (id TEXT PRIMARY KEY, address TEXT NOT NULL, started_at TEXT NOT NULL, "
            "expires_at DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE leases (sandbox_id TEXT PRIMARY KEY, holder TEXT NOT NULL, since TEXT NOT NULL)",
            "CREATE INDEX leases_by_holder ON leases (holder)",
        ),
    ),
    Migration(
        4, "when each sandbox ended (for history retention)",
        sqlite=(
            "ALTER TABLE sandboxes ADD COLUMN ended_at REAL",
            "UPDATE sandboxes SET ended_at = "
            "(julianday(json_extract(record, '$.terminated_at')) - 2440587.5) * 86400.0 "
            "WHERE json_extract(record, '$.terminated_at') IS NOT NULL",
            "CREATE INDEX sandboxes_by_end ON sandboxes (ended_at)",
        ),
        postgresql=(
            "ALTER TABLE sandboxes ADD COLUMN ended_at DOUBLE PRECISION",
            "UPDATE sandboxes SET ended_at = "
            "EXTRACT(EPOCH FROM CAST(CAST(record AS json) ->> 'terminated_at' AS TIMESTAMPTZ)) "
            "WHERE CAST(record AS json) ->> 'terminated_at' IS NOT NULL",
            "CREATE INDEX sandboxes_by_end ON sandboxes (ended_at)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

#: The table of applied versions (the same statement works in both dialects).
CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TEXT NOT NULL)")
RECORD_VERSION = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gateway than this one."""


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a database at version ``current`` still needs, in order."""
    if current > LATEST:
        raise SchemaTooNew(f"the database's schema is version {current}, "
                           f"newer than this gateway's ({LATEST}): "
                           "run a gateway at least as new as the one that last opened it")
    return tuple(m for m in MIGRATIONS if m.version > current)


assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), "versions must be 1, 2, 3, ..."
