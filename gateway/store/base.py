"""The store interface: durable JSON records of sandboxes and executions, and hashed API keys.

Records are plain dicts (``Sandbox.to_record()``, ``Execution.to_record()``): the store knows
nothing of the models above it. Every method is a coroutine; implementations keep blocking
database calls off the event loop.
"""

from __future__ import annotations

import abc
from typing import Any

Record = dict[str, Any]


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every record write handed over so far is durable."""

    @abc.abstractmethod
    async def put_sandbox(self, record: Record) -> None:
        """Insert or replace the sandbox record with ``record["id"]``.

        May return before the write is durable (see ``flush``), but every later read sees it.
        """

    @abc.abstractmethod
    async def get_sandbox(self, sandbox_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None) -> list[Record]:
        """Sandboxes in creation order, optionally only one owner's and only some statuses."""

    @abc.abstractmethod
    async def put_execution(self, record: Record) -> None:
        """Insert or replace the execution record with ``record["id"]``."""

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_executions(
        self, sandbox_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[Record]:
        """A sandbox's executions in submission order."""

    @abc.abstractmethod
    async def list_unfinished_executions(self) -> list[Record]:
        """Executions still ``queued`` or ``running`` (left so by a gateway that stopped)."""

    @abc.abstractmethod
    async def add_api_key(self, user: str, key_hash: str) -> None: ...

    @abc.abstractmethod
    async def find_api_key(self, key_hash: str) -> str | None:
        """The user owning the key with this hash, if any."""

    @abc.abstractmethod
    async def count_api_keys(self) -> int: ...
