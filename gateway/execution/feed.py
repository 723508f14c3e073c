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

Stream text that arrives while no follower has taken the last event yet joins that event when it
is stream text of the same name (up to ``MERGE_BYTES``), as a notebook joins it: a flood of
small prints reaches a client that is behind in a few large events instead of a write per print.
Nothing is reordered, and positions mean the same for every follower (an event is joined to only
until a follower has taken it, and then it is final).

The final event (``close``) may be published while what it tells is being stored: a follower
gets it once that is durable, or, if it asks (``follow(early_end=True)``), at once, to write all
of it but its end and finish once ``stored()`` returns — a large one's bytes go out while the
store commits, and the client has the event whole only once it is durable.
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

    def value(self, index: int) -> int:
        return self._values[index]

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


#: Stream text joined into one event at most (more starts another).
MERGE_BYTES = 1 << 20


def _stream_name(event: dict[str, Any]) -> str | None:
    """The stream of an ``output`` event that is stream text (None for any other event)."""
    output = event.get("output")
    if (event.get("type") == "output" and "display_id" not in event and isinstance(output, dict)
            and output.get("output_type") == "stream" and isinstance(output.get("text"), str)):
        return str(output.get("name"))
    return None


class ExecutionFeed:
    def __init__(self) -> None:
        self._events: list[dict[str, Any] | None] = []
        #: Stream text for the last event, not joined into it yet (no follower took it so far).
        self._open: list[str] = []
        self._open_bytes = 0
        #: Positions below this were taken by a follower (final: nothing joins them any more).
        self._taken = 0
        self._sizes = PrefixSums()
        #: display id -> position of its latest update_display.
        self._latest_update: dict[str, int] = {}
        self._closed = False
        #: Done once the final event's execution is durable (None: it is, or there is none).
        self._stored: asyncio.Future[Any] | None = None
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
        if not self._join(event):
            self._append(event)
        self._wake()

    def _join(self, event: dict[str, Any]) -> bool:
        """Join stream text to the last event if it is stream text of the same name no follower has taken."""
        name = _stream_name(event)
        last = len(self._events) - 1
        if name is None or last < self._taken or self._events[last] is None:
            return False
        previous = self._events[last]
        assert previous is not None
        text = event["output"]["text"]
        if _stream_name(previous) != name:
            return False
        held = self._open_bytes if self._open else len(previous["output"]["text"])
        if held + len(text) > MERGE_BYTES:
            return False
        if not self._open:
            self._open.append(previous["output"]["text"])
            self._open_bytes = len(self._open[0])
        self._open.append(text)
        self._open_bytes += len(text)
        self._sizes.set(last, self._sizes.value(last) + len(text))
        return True

    def _take(self, position: int) -> dict[str, Any] | None:
        """The event at ``position`` for a follower (from then on final)."""
        if position >= self._taken:
            self._taken = position + 1
            if position == len(self._events) - 1:
                self._seal()
        return self._events[position]

    def _seal(self) -> None:
        """Join the stream text waiting into the last event (replaced: a follower may hold the old one)."""
        if self._open:
            last = len(self._events) - 1
            event = self._events[last]
            assert event is not None
            self._events[last] = {**event, "output": {**event["output"], "text": "".join(self._open)}}
            self._open, self._open_bytes = [], 0

    def close(self, final_event: dict[str, Any] | None = None, *, stored: asyncio.Future[Any] | None = None) -> None:
        """Publish the last event (if any) and end every follower's iteration after it.

        ``stored``: done once what the final event tells is durable (its result is not looked at),
        or failed if it never will be; followers get the event then (or, failed, its exception),
        or at once if they asked to wait for it themselves.
        """
        if final_event is not None:
            self._append(final_event)
            self._stored = stored
        self._closed = True
        self._wake()

    def is_final(self, position: int) -> bool:
        """Whether the event at ``position`` is the feed's last (its final event, or none: see ``close``)."""
        return self._closed and position == len(self._events) - 1

    async def stored(self) -> None:
        """Once what the final event tells is durable (at once if it is, or the feed is not closed);
        raises what ``stored`` was failed with if it never will be."""
        if self._stored is not None:
            await asyncio.shield(self._stored)

    def _append(self, event: dict[str, Any]) -> None:
        self._seal()  # the last event is final now
        self._events.append(event)
        self._sizes.append(event_size(event))

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def cursor(self, start: int = 0) -> FeedCursor:
        return FeedCursor(self, start)

    def follow(self, start: int = 0, *, idle: float | None = None,
               early_end: bool = False) -> AsyncIterator[dict[str, Any] | None]:
        """Every event from ``start`` on, waiting for new ones until the feed closes (see ``FeedCursor.follow``)."""
        return self.cursor(start).follow(idle=idle, early_end=early_end)


class FeedCursor:
    """One follower's place in a feed."""

    def __init__(self, feed: ExecutionFeed, start: int = 0) -> None:
        self.feed = feed
        self.position = start

    @property
    def behind(self) -> int:
        """Bytes of events published that this follower has not taken yet."""
        return self.feed.bytes_after(self.position)

    @property
    def took_last(self) -> bool:
        """Whether the event it took last was the feed's last (its final event, or none: see ``close``)."""
        return self.feed.is_final(self.position - 1)

    async def follow(self, *, idle: float | None = None, early_end: bool = False) -> AsyncIterator[dict[str, Any] | None]:
        """Yield every event from the cursor's position on, waiting for new ones until the feed closes.

        With ``idle``, also yield None after each ``idle`` seconds without an event, so a
        streaming client can send a keepalive while a long execution is silent. The final event
        comes once what it tells is durable; with ``early_end``, as soon as it is published (the
        caller awaits ``feed.stored()`` before the event's end leaves).
        """
        feed = self.feed
        while True:
            changed = feed._changed
            while self.position < len(feed._events):
                if not early_end and feed.is_final(self.position):
                    await feed.stored()
                event = feed._take(self.position)
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
