"""EventLog: the outbox as a live feed, and its retention.

    log = EventLog(store=store, parent=app)
    log.start()                                    # prunes events older than ``retention``
    async for record in log.follow(after=41, owner="alice"):   # None: nothing new for ``keepalive`` s
        ...
    log.written()                                  # after a change: wake the followers now
    await log.stop()

Events are read from the store, never from memory, so a follower sees what this gateway wrote
and what any other process sharing the store wrote (those within ``poll_interval``). A follower
reads in pages of ``page`` events: one that fell far behind costs a page at a time, not the
whole backlog at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from gateway.retention import prune_periodically
from gateway.store.base import Record, Store
from gateway.tasks import stop_tasks


class EventLog(LoggingConfigurable):
    retention = Float(
        7 * 86400.0, help="Seconds events are kept in the outbox (for Last-Event-ID and webhooks catching up)."
    ).tag(config=True)
    poll_interval = Float(
        2.0, help="Seconds between two looks at the outbox for events written by other processes."
    ).tag(config=True)
    page = Int(500, help="Most events read from the outbox at once.").tag(config=True)

    def __init__(self, *, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(prune_periodically(
            lambda before: self.store.prune_events(before=before), self.retention, what="events"
        ), name="event-retention")

    async def stop(self) -> None:
        """Stop pruning, and end every follower's iteration."""
        self._stopped = True
        self.written()
        if self._task is not None:
            await stop_tasks([self._task], within=10.0, what="event log")
            self._task = None

    def written(self) -> None:
        """Events were handed to the store: wake every follower."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int, owner: str | None, *, keepalive: float | None = None,
                     types: list[str] | None = None) -> AsyncIterator[Record | None]:
        """Every event after ``after`` (of ``owner``, or everyone's for None), then each new one as it comes.

        Yields None after ``keepalive`` seconds without an event, so a stream can send a comment.
        """
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not self._stopped:
            changed = self._changed
            records = await self.store.list_events(after=after, owner=owner, limit=self.page, types=types)
            for record in records:
                after = int(record["id"])
                yield record
            if records:
                quiet_since = loop.time()
                if len(records) == self.page:
                    continue  # more are waiting
            wait = self.poll_interval
            if keepalive is not None:
                wait = min(wait, max(0.0, quiet_since + keepalive - loop.time()))
            try:
                async with asyncio.timeout(wait):  # (wait_for can swallow a cancellation)
                    await changed.wait()
            except TimeoutError:
                if self._stopped:
                    return
                if keepalive is not None and loop.time() - quiet_since >= keepalive:
                    quiet_since = loop.time()
                    yield None
