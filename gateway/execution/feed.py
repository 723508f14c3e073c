"""A live, replayable log of one execution's events for streaming clients.

    feed = ExecutionFeed()
    feed.publish({"type": "output", ...})    # executor side, never blocks
    async for event in feed.follow():        # each client at its own pace, from the start
        await send(event)
    cursor = feed.cursor(start=3)            # a follower that can tell how far behind it is
    async for event in cursor.follow(): ...
    cursor.behind                            # bytes of events published that it has not taken yet

The executor never waits for a client: a slow client only lags behind in the log, so it gets
backpressure (its own writes are awaited) while the kernel's output keeps being drained and
stored. The log is bounded because what the execution holds is (``OutputCollector`` charges
every event to the execution's cap), and it keeps only the latest ``update_display`` of each
display id: an earlier one that a new one supersedes leaves a hole (skipped by followers, still
counted as a position, so a client re-attaching at event N means the same N as before).
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterator
from typing import Any

from gateway.execution.outputs import EVENT_COST, output_size


def event_size(event: dict[str, Any]) -> int:
    """What holding ``event`` costs, as ``OutputCollector`` charges it (the final ``execution``
    event is nominal: it is the stored execution, held anyway)."""
    output = event.get("output")
    return EVENT_COST + (output_size(output) if isinstance(output, dict) else 0)


class PrefixSums:
    """Sizes by position, with O(log n) prefix sums as sizes change (a Fenwick tree that grows)."""

    def __init__(self) -> None:
        self._values = array("q")
        self._tree = array("q", [0])  # 1-based
        self.total = 0

    def __len__(self) -> int:
        return len(self._values)

    def append(self, value: int) -> None:
        self._values.append(value)
        n = len(self._values)
        low = n & -n  # tree[n] covers positions (n - low, n]
        self._tree.append(value + self.prefix(n - 1) - self.prefix(n - low))
        self.total += value

    def set(self, index: int, value: int) -> None:
        delta = value - self._values[index]
        self._values[index] = value
        self.total += delta
        i = index + 1
        while i < len(self._tree):
            self._tree[i] += delta
            i += i & -i

    def prefix(self, n: int) -> int:
        """The sum of the first ``n`` sizes."""
        total, i = 0, n
        while i > 0:
            total += self._tree[i]
            i -= i & -i
        return total


class ExecutionFeed:
    def __init__(self) -> None:
        self._events: list[dict[str, Any] | None] = []
        self._sizes = PrefixSums()
        #: display id -> position of its latest update_display.
        self._latest_update: dict[str, int] = {}
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Events published so far (holes of superseded updates included)."""
        return len(self._events)

    @property
    def held_bytes(self) -> int:
        """What the events still held cost (``event_size`` of each)."""
        return self._sizes.total

    def bytes_after(self, position: int) -> int:
        """What the events held from ``position`` on cost: how far behind a follower there is."""
        return self._sizes.total - self._sizes.prefix(min(position, len(self._events)))

    def publish(self, event: dict[str, Any]) -> None:
        if event.get("type") == "update_display":
            earlier = self._latest_update.get(event["display_id"])
            if earlier is not None:  # superseded: no follower needs it any more
                self._events[earlier] = None
                self._sizes.set(earlier, 0)
            self._latest_update[event["display_id"]] = len(self._events)
        self._append(event)
        self._wake()

    def close(self, final_event: dict[str, Any] | None = None) -> None:
        """Publish the last event (if any) and end every follower's iteration after it."""
        if final_event is not None:
            self._append(final_event)
        self._closed = True
        self._wake()

    def _append(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        self._sizes.append(event_size(event))

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def cursor(self, start: int = 0) -> FeedCursor:
        return FeedCursor(self, start)

    def follow(self, start: int = 0, *, idle: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Every event from ``start`` on, waiting for new ones until the feed closes (see ``FeedCursor.follow``)."""
        return self.cursor(start).follow(idle=idle)


class FeedCursor:
    """One follower's place in a feed."""

    def __init__(self, feed: ExecutionFeed, start: int = 0) -> None:
        self.feed = feed
        self.position = start

    @property
    def behind(self) -> int:
        """Bytes of events published that this follower has not taken yet."""
        return self.feed.bytes_after(self.position)

    async def follow(self, *, idle: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Yield every event from the cursor's position on, waiting for new ones until the feed closes.

        With ``idle``, also yield None after each ``idle`` seconds without an event, so a
        streaming client can send a keepalive while a long execution is silent.
        """
        feed = self.feed
        while True:
            changed = feed._changed
            while self.position < len(feed._events):
                event = feed._events[self.position]
                self.position += 1
                if event is not None:
                    yield event
            if feed._closed:
                return
            try:
                async with asyncio.timeout(idle):
                    await changed.wait()
            except TimeoutError:
                yield None
