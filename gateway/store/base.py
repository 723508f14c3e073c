"""The store interface: durable JSON records of sandboxes and executions, and hashed API keys.

Records are plain dicts (``Sandbox.to_record()``, ``Execution.to_record()``): the store knows
nothing of the models above it, and encodes them later on a thread of its own, so a record
handed over must not be changed afterwards.

What every store guarantees:

- **Nothing blocks the event loop**: encoding, writes, commits and reads run on the store's own
  thread(s) or over its asynchronous driver.
- **Writes are durable when their awaitable resolves.** ``put_*`` hand the record over at once,
  in call order, and return an awaitable; awaiting it returns once the record is committed.
  The API acknowledges a change only after that (see README "Storage").
- **One transaction per batch**: writes handed over while the previous batch commits share the
  next commit; writes made without an ``await`` between them always commit together.
- **Read your writes**: a read sees every write handed over before it — except while the store
  is failing, when reads answer from what is durable instead of waiting.
- **Writes that depend on the current state are one conditional statement** (``put_sandbox_if``,
  ``put_sandbox_within``, ``put_execution_within``), never a read then a write across an
  ``await``: another task or another gateway replica could change the state in between. Their
  answer says whether they applied. New state-dependent writes (leases, say) follow the same
  pattern: a statement whose ``WHERE`` is the condition, run by the store's writer in order with
  everything else (PostgreSQL: after ``SQLStore._owner_lock`` where rows are counted).
- **Changes and their events commit together**: the statements of one write (``put_sandbox(...,
  events=...)``) run in one transaction, as do all writes made without an ``await`` between them.
- **Nothing handed over is dropped**: if the database fails (disk full, read-only, locked, gone),
  the store keeps the writes in order and retries until they commit; meanwhile ``problem`` says
  why and ``check_available()`` raises ``StoreUnavailable``, which callers use to refuse new work.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import Any

from gateway.errors import StoreUnavailable

Record = dict[str, Any]

#: What a write returns at once: awaiting it returns when the write is durable (its value is of no use).
Written = Awaitable[object]


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one owner's sandboxes in ``statuses`` may hold together; 0 is no limit.

    ``Store.put_sandbox_within`` applies a budget to a record whose status is in ``statuses``.
    """

    statuses: tuple[str, ...]
    count: int = 0
    cpu: float = 0.0
    memory_mb: int = 0


class Store(abc.ABC):
    #: The kind of database, for /health (``sqlite``, ``postgresql``).
    kind = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (``gateway.store.migrations``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Wait (a bounded time) for the writes still held, then disconnect; logs any not written."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every write handed over so far is durable (through an outage, if need be)."""

    @property
    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why writes cannot be committed right now; None while they can."""

    @abc.abstractmethod
    def held_writes(self) -> int:
        """Writes handed over and not committed yet."""

    def check_available(self) -> None:
        """Raise ``StoreUnavailable`` while writes fail: new work must not be acknowledged then."""
        problem = self.problem
        if problem is not None:
            raise StoreUnavailable(
                f"the gateway cannot store records right now ({problem}); "
                "nothing is lost, but new work is refused until it can: retry later"
            )

    def describe(self) -> dict[str, Any]:
        """The store's state, for /health."""
        return {"kind": self.kind, "available": self.problem is None, "problem": self.problem,
                "held_writes": self.held_writes()}

    # -- sandboxes -------------------------------------------------------------------------------

    @abc.abstractmethod
    def put_sandbox(self, record: Record, *, events: Sequence[Record] = ()) -> Written:
        """Insert or replace the sandbox record with ``record["id"]``; ``events`` go to the outbox with it."""

    @abc.abstractmethod
    def put_sandbox_within(self, record: Record, budgets: Sequence[Budget], *,
                           events: Sequence[Record] = ()) -> Awaitable[bool]:
        """Like ``put_sandbox``, but only if the owner's *other* sandboxes plus this one stay within every
        budget that applies to the record's status: check and write in one transaction. True if written."""

    @abc.abstractmethod
    async def owner_usage(self, owner: str, *, exclude: str | None = None) -> dict[str, tuple[int, float, int]]:
        """Per status, (count, CPU cores, memory MiB) of the owner's sandboxes (but ``exclude``)."""

    @abc.abstractmethod
    async def put_sandbox_if(self, record: Record, *, statuses: Collection[str]) -> bool:
        """Replace the stored sandbox record only if its status is one of ``statuses``; whether it did.

        A compare-and-set on the status: e.g. ``paused`` only from ``running``, so a transition
        cannot overwrite a concurrent ``terminated``. False if there is no such record.
        """

    @abc.abstractmethod
    async def get_sandbox(self, sandbox_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None,
                             limit: int | None = None, offset: int = 0) -> list[Record]:
        """Sandboxes in creation order, optionally only one owner's and only some statuses, and
        only ``limit`` of them from the ``offset``-th on."""

    @abc.abstractmethod
    async def count_sandboxes(self, *, owner: str | None = None, statuses: list[str] | None = None) -> int:
        """How many sandboxes ``list_sandboxes`` with the same filters would list without a limit."""

    # -- executions ------------------------------------------------------------------------------

    @abc.abstractmethod
    def put_execution(self, record: Record, *, events: Sequence[Record] = ()) -> Written:
        """Insert or replace the execution record with ``record["id"]``; ``events`` go to the outbox with it."""

    @abc.abstractmethod
    def put_execution_within(self, record: Record, owner: str, *, since: float, limit: int,
                             at: float) -> Awaitable[bool]:
        """Insert a new execution's record only if ``owner`` started fewer than ``limit`` since ``since``
        (epoch seconds); counts it as started at ``at``. One transaction. True if written."""

    @abc.abstractmethod
    async def recent_executions(self, owner: str, *, since: float) -> tuple[int, float | None]:
        """How many executions ``owner`` started since ``since``, and when the oldest of them started."""

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_executions(
        self, sandbox_id: str, *, limit: int | None = None, offset: int = 0
    ) -> list[Record]:
        """A sandbox's executions in submission order."""

    async def iter_executions(self, sandbox_id: str, *, page: int = 8) -> AsyncIterator[Record]:
        """A sandbox's executions in submission order, read ``page`` at a time: an export of any
        length holds a few records at once, never the whole history."""
        offset = 0
        while records := await self.list_executions(sandbox_id, limit=page, offset=offset):
            for record in records:
                yield record
            offset += len(records)

    @abc.abstractmethod
    async def list_unfinished_executions(self, sandbox_id: str | None = None) -> list[Record]:
        """Executions still ``queued`` or ``running`` (left so by a gateway that stopped), of one sandbox if given."""

    # -- events (the outbox) ---------------------------------------------------------------------

    @abc.abstractmethod
    async def list_events(self, *, after: int, owner: str | None = None, limit: int = 500,
                          types: Sequence[str] | None = None) -> list[Record]:
        """Events with an ``id`` above ``after``, oldest first (only ``owner``'s, only ``types``, if given)."""

    @abc.abstractmethod
    async def last_event_id(self) -> int:
        """The ``id`` of the newest event (0 if none)."""

    @abc.abstractmethod
    def prune_events(self, *, before: float) -> Awaitable[int]:
        """Remove the events written before ``before`` (epoch seconds); how many."""

    # -- history retention ---------------------------------------------------------------------

    @abc.abstractmethod
    async def prune_history(self, *, statuses: Sequence[str], before: float, limit: int) -> int:
        """Forget up to ``limit`` sandboxes in ``statuses`` that ended (``terminated_at``) before ``before``
        (epoch seconds) and that no replica alive holds, longest ended first: their records, executions and
        leases, in one transaction. How many sandboxes; safe to run on several replicas at once."""

    @abc.abstractmethod
    async def webhook_cursor(self, url: str) -> int | None:
        """The last event taken by the webhook at ``url``; None if it was never configured."""

    @abc.abstractmethod
    def set_webhook_cursor(self, url: str, event_id: int) -> Written: ...

    # -- replicas and leases (``gateway.sandboxes.leases``) ----------------------------------------

    @abc.abstractmethod
    def beat(self, replica_id: str, address: str, ttl: float) -> Awaitable[bool]:
        """The replica's heartbeat: alive for ``ttl`` more seconds of the database's clock, reachable at
        ``address``. True if it was still alive before (False: its leases may have been taken meanwhile)."""

    @abc.abstractmethod
    def stop_beating(self, replica_id: str) -> Written:
        """The replica is not alive from now on: its leases are free for others to claim."""

    @abc.abstractmethod
    async def list_replicas(self) -> list[Record]:
        """Every replica ever seen: ``id``, ``address``, ``started_at``, ``alive``, ``expires_in`` (seconds)."""

    @abc.abstractmethod
    def claim_lease(self, sandbox_id: str, holder: str) -> Awaitable[bool]:
        """Make ``holder`` the holder of the sandbox's lease, unless another replica that is alive holds it.
        One conditional statement; True if ``holder`` holds it now."""

    @abc.abstractmethod
    def drop_lease(self, sandbox_id: str, holder: str) -> Written:
        """Give up the lease, if ``holder`` holds it."""

    @abc.abstractmethod
    async def get_lease(self, sandbox_id: str) -> Record | None:
        """``holder``, its ``address``, whether it is ``alive`` and its heartbeat's ``expires_in``; None if unleased."""

    @abc.abstractmethod
    async def leases_of(self, holder: str) -> list[str]:
        """The ids of the sandboxes whose lease ``holder`` holds."""

    @abc.abstractmethod
    async def runtime_ids_in_use(self) -> set[str]:
        """The runtime ids (``kernel.runtime_id``) live sandboxes run under other than their own ids (a
        paused sandbox resumed on a warm-pool kernel runs under that kernel's id)."""

    @abc.abstractmethod
    async def unheld_sandboxes(self, statuses: Sequence[str]) -> list[Record]:
        """Records of the sandboxes in ``statuses`` that no replica alive holds (unleased, or the holder is gone)."""

    # -- API keys --------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_api_key(self, user: str, key_hash: str) -> Written: ...

    @abc.abstractmethod
    def revoke_api_keys(self, *, key_hash: str | None = None, user: str | None = None) -> Awaitable[int]:
        """Remove the key with this hash, or every key of ``user``; how many were removed."""

    @abc.abstractmethod
    async def find_api_key(self, key_hash: str) -> str | None:
        """The user owning the key with this hash, if any."""

    @abc.abstractmethod
    async def count_api_keys(self) -> int: ...
