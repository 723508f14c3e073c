"""The store's writes: kept in order, committed in batches off the loop, retried until durable.

    writes = WriteQueue(commit, name="sqlite")
    writes.start()
    rows = await writes.add(Write([(sql, (id, AsJSON(record)))], key=("sandboxes", id)))
    await writes.caught_up()            # before a read: what was written so far is committed
    await writes.stop(timeout=10.0)

``commit(batch)`` belongs to the store: it runs the writes of a batch in one transaction, off
the event loop, and returns each write's row count (or the error that write alone met, e.g. a
constraint). Writes added while a batch commits wait for the next one, so under load many share
a commit; writes added without an ``await`` between them always share one.

If ``commit`` raises (disk full, read-only, locked past the busy timeout, connection lost), the
transaction was rolled back. The queue keeps the batch and retries it, with the writes added
since behind it, backing off up to ``max_backoff`` seconds, until it commits; meanwhile
``problem`` says why, so the gateway refuses new work, and reads stop waiting for writes that
cannot land. Whoever awaits a write returns only once it is durable. While writes wait, one with
the same ``key`` as an earlier one (a full-record upsert) takes that one's place, so an outage
holds one copy of each record; a write without a key (a conditional one) is a barrier that no
later write moves across.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from gateway import jsonbytes
from gateway.errors import StoreUnavailable
from gateway.store import codec
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

#: One SQL statement with ``?`` placeholders and its parameters.
Statement = tuple[str, tuple[Any, ...]]
#: What a write came to: the row count of its last statement, or the error it alone met.
Outcome = int | BaseException
Commit = Callable[[list["Write"]], Awaitable[list[Outcome]]]


@dataclasses.dataclass(frozen=True)
class AsJSON:
    """A statement parameter that the store's thread encodes as JSON (``codec.encode``), not the loop."""

    value: Any


@dataclasses.dataclass(eq=False)
class Write:
    """Statements run in order in one transaction; ``key`` names the record a full-record write replaces.

    ``bulk``: its statements may touch many rows (a prune), however small its values.
    """

    statements: list[Statement]
    key: Hashable | None = None
    bulk: bool = False
    waiters: list[asyncio.Future[int]] = dataclasses.field(default_factory=list)
    #: The position of its latest addition in the queue's order.
    seq: int = 0
    _prepared: list[Statement] | None = None

    def prepared(self) -> list[Statement]:
        """The statements with their JSON parameters encoded (on the store's thread; once per write)."""
        if self._prepared is None:
            self._prepared = [
                (sql, tuple(codec.encode(p.value) if isinstance(p, AsJSON) else p for p in params))
                for sql, params in self.statements
            ]
        return self._prepared

    def absorb(self, later: Write) -> None:
        """Become ``later`` (a newer version of the same record), keeping this write's place."""
        self.statements, self._prepared, self.seq = later.statements, None, later.seq
        self.waiters.extend(later.waiters)


def small(batch: list[Write], limit: int) -> bool:
    """Whether the batch's values come to fewer than ``limit`` bytes, roughly (``jsonbytes.reaches``),
    and none of its writes is a bulk one."""
    return not any(write.bulk for write in batch) and not jsonbytes.reaches([p.value if isinstance(p, AsJSON) else p
                                  for write in batch for _, params in write.statements for p in params], limit)


def prepare(batch: list[Write],
            record_errors: tuple[type[BaseException], ...]) -> list[list[Statement] | BaseException]:
    """Each write's statements with their JSON encoded (call it on the store's thread), or the
    error (one of ``record_errors``) that this write alone met."""
    prepared: list[list[Statement] | BaseException] = []
    for write in batch:
        try:
            prepared.append(write.prepared())
        except record_errors as exc:
            prepared.append(exc)
    return prepared


class WriteQueue:
    def __init__(self, commit: Commit, *, name: str, describe: Callable[[BaseException], str] = str,
                 first_backoff: float = 0.05, max_backoff: float = 5.0) -> None:
        self._commit = commit
        self.name = name
        self._describe = describe
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._pending: list[Write] = []
        #: The pending keyed writes since the last barrier, by key: where a newer version goes.
        self._latest: dict[Hashable, Write] = {}
        self._in_flight: list[Write] = []
        self._added = 0
        #: Every write whose ``seq`` is at most this is committed.
        self._committed = 0
        #: Readers waiting for a ``seq`` to be committed; ``strict`` ones wait through failures too.
        self._catchers: list[tuple[int, bool, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Why the last commit failed, while its writes wait for a retry.
        self.problem: str | None = None
        #: Commits that failed since the start (each retried).
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"store-writer-{self.name}")

    def add(self, write: Write) -> asyncio.Future[int]:
        """Queue ``write`` behind every earlier one; the future resolves once it is committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._added += 1
        write.seq = self._added
        write.waiters.append(future)
        self._enqueue(write)
        self._wake.set()
        return future

    def held(self) -> int:
        """Writes not committed yet (waiting or being committed)."""
        return len(self._pending) + len(self._in_flight)

    async def caught_up(self) -> None:
        """Wait until every write added so far is committed, or until commits fail (then at once)."""
        if self._committed < self._added and self.problem is None:
            await self._until(self._added, strict=False)

    async def settled(self) -> None:
        """Wait until every write added so far is committed, however long an outage lasts."""
        if self._committed < self._added:
            await self._until(self._added, strict=True)

    async def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the writes still held, then stop; log those left."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):  # (wait_for can swallow a cancellation)
                await self.settled()
        except TimeoutError:
            pass
        await stop_tasks([self._task], within=10.0, what="store writes")
        self._task = None
        left = self._in_flight + self._pending
        if left:
            log.error("store %s: closed with %d writes not committed (%s)",
                      self.name, len(left), self.problem)
        for write in left:
            for waiter in write.waiters:
                if not waiter.done():
                    waiter.set_exception(StoreUnavailable("the store closed before this record was written"))
                    waiter.exception()  # retrieved: the log line above says it
        for _, _, catcher in self._catchers:
            if not catcher.done():
                catcher.set_result(None)

    # -- the writer --------------------------------------------------------------------------------

    def _enqueue(self, write: Write) -> None:
        if write.key is None:
            self._latest.clear()
        else:
            earlier = self._latest.get(write.key)
            if earlier is not None:
                earlier.absorb(write)
                return
            self._latest[write.key] = write
        self._pending.append(write)

    def _take(self, failed: list[Write] | None = None) -> list[Write]:
        """The next batch: a failed one first (what was added since coalesced behind it), then the rest."""
        if failed:
            waiting, self._pending, self._latest = self._pending, [], {}
            for write in failed + waiting:
                self._enqueue(write)
        self._in_flight, self._pending, self._latest = self._pending, [], {}
        return self._in_flight

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            batch = self._take()
            delay = self.first_backoff
            while True:
                try:
                    outcomes = await self._commit(batch)
                    break
                except Exception as exc:  # the whole transaction was rolled back: keep it, retry it
                    self._failed(exc, batch)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff)
                    batch = self._take(failed=batch)
            self._committed_batch(batch, outcomes)

    def _failed(self, exc: BaseException, batch: list[Write]) -> None:
        reason = self._describe(exc)
        self.failures += 1
        if reason != self.problem:
            log.error("store %s: %d writes could not be committed (%s); they are kept and retried, "
                      "and new work is refused meanwhile", self.name, self.held(), reason,
                      exc_info=exc if self.problem is None else None)
        self.problem = reason
        self._release(lambda target, strict: not strict)  # reads answer from what is durable

    def _committed_batch(self, batch: list[Write], outcomes: list[Outcome]) -> None:
        self._in_flight = []
        if self.problem is not None:
            log.warning("store %s: commits succeed again (after %s)", self.name, self.problem)
            self.problem = None
        self._committed = max(write.seq for write in batch)
        for write, outcome in zip(batch, outcomes):
            for waiter in write.waiters:
                if waiter.done():  # its caller stopped waiting; the write stands
                    continue
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        self._release(lambda target, strict: target <= self._committed)

    async def _until(self, target: int, *, strict: bool) -> None:
        catcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._catchers.append((target, strict, catcher))
        await catcher

    def _release(self, ready: Callable[[int, bool], bool]) -> None:
        keep = []
        for target, strict, catcher in self._catchers:
            if not ready(target, strict):
                keep.append((target, strict, catcher))
            elif not catcher.done():
                catcher.set_result(None)
        self._catchers = keep
