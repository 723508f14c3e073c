"""A live, replayable log of one execution's events for streaming clients.

    feed = ExecutionFeed()
    feed.publish({"type": "output", ...})    # executor side, never blocks
    async for event in feed.follow():        # each client at its own pace, from the start
        await send(event)

The executor never waits for a client: a slow client only lags behind in the log, so it gets
backpressure (its own writes are awaited) while the kernel's output keeps being drained and
stored. The log is bounded because the execution's output is (see ``OutputCollector``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class ExecutionFeed:
    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._wake()

    def close(self, final_event: dict[str, Any] | None = None) -> None:
        """Publish the last event (if any) and end every follower's iteration after it."""
        if final_event is not None:
            self._events.append(final_event)
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, start: int = 0, *, idle: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Yield every event from ``start`` on, waiting for new ones until the feed closes.

        With ``idle``, also yield None after each ``idle`` seconds without an event, so a
        streaming client can send a keepalive while a long execution is silent.
        """
        position = start
        while True:
            changed = self._changed
            while position < len(self._events):
                yield self._events[position]
                position += 1
            if self._closed:
                return
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                yield None
