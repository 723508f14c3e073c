"""Real databases to run the store against, and to make fail for real: SQLite on a small disk
(a tmpfs that fills up) and PostgreSQL (the test session's server, stopped and started).

    with backend_for("sqlite", request, tmp_path) as backend:
        store = backend.store()                      # a new store on its database (not opened)
        backend.gateway_args()                       # the --store-url for a gateway on it
        backend.fail(); ...; backend.recover()       # a real outage
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store.postgres import PostgresStore
from gateway.store.sql import SQLStore
from gateway.store.sqlite import SQLiteStore
from tests.disks import fill, small_disk
from tests.postgres import PostgresServer

BACKENDS = ["sqlite", "postgresql"]


class Backend(abc.ABC):
    name = ""
    #: Words one of which the store's ``problem`` contains during ``fail()``.
    failure_words: tuple[str, ...] = ()
    #: Whether reads still answer during ``fail()`` (a full disk: yes; a stopped server: no).
    readable_while_failing = True

    @abc.abstractmethod
    def store(self, **options: Any) -> SQLStore:
        """A new store on this backend's database (not opened)."""

    @abc.abstractmethod
    def gateway_args(self) -> list[str]:
        """The options of a gateway whose store is this database."""

    @abc.abstractmethod
    def fail(self) -> None:
        """Make the database fail for real."""

    @abc.abstractmethod
    def recover(self) -> None: ...

    @abc.abstractmethod
    async def execute(self, sql: str) -> None:
        """Run ``sql`` on the database, outside any store."""


class SQLiteBackend(Backend):
    name = "sqlite"
    failure_words = ("full",)

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.path = str(disk / "gateway.db")
        self.filler: Path | None = None

    def store(self, **options: Any) -> SQLStore:
        return SQLiteStore(self.path, **options)

    def gateway_args(self) -> list[str]:
        return [f"--store-url=sqlite:///{self.path}"]

    def fail(self) -> None:
        self.filler = fill(self.disk)  # a commit that needs room (a large record) fails

    def recover(self) -> None:
        assert self.filler is not None
        self.filler.unlink()

    async def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path, isolation_level=None) as db:
            db.execute(sql)


class PostgresBackend(Backend):
    name = "postgresql"
    failure_words = ("Connect", "connection", "shutdown", "closed", "refused")
    readable_while_failing = False

    def __init__(self, server: PostgresServer, url: str) -> None:
        self.server = server
        self.url = url

    def store(self, **options: Any) -> SQLStore:
        return PostgresStore(self.url, **options)

    def gateway_args(self) -> list[str]:
        return [f"--store-url={self.url}"]

    def fail(self) -> None:
        self.server.stop()

    def recover(self) -> None:
        self.server.start()

    async def execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@contextlib.contextmanager
def backend_for(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if name == "sqlite":
        with small_disk(tmp_path / "disk", size_mb=16) as disk:
            yield SQLiteBackend(disk)
    else:
        server, url = request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_url")
        yield PostgresBackend(server, url)
