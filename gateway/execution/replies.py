"""The messages answering one kernel request, in arrival order, bounded in bytes.

    replies = Replies(max_bytes=20 << 20)
    replies.offer("iopub", message)      # the connection's reader: never blocks, never holds past the bound
    channel, msg = await replies.get()   # ("iopub" | "shell" | "gone" | "dropped" | "nested", message or ...)

ZMQ gives no backpressure on iopub: a kernel can publish output faster than the gateway takes
it, and what waits would pile up in the gateway. Output messages arriving while more than
``max_bytes`` of them wait are dropped at once, before their content is parsed (so the reader
keeps up with any kernel), and the request's reader is told once per run of drops
(``("dropped", OUTRAN)``; ``OVERSIZED`` for a message the kernel's relay cut), so the execution says it was truncated; an ``update_display_data``
instead replaces the one of its display still waiting, so a display's latest content always
arrives. Status messages and shell replies are never dropped: they are how a request ends.

An output message whose content or metadata nests too deep to be read at all (``TOO_DEEP``: a
kernel can send JSON 100,000 levels deep) is queued as ``("nested", its msg_type)``, so the
execution keeps a note in its place (``OutputCollector.unreadable``) instead of losing it unsaid.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from gateway.execution.messages import OUTRAN, TOO_DEEP, BadMessage, Message

#: iopub messages that may be dropped under a flood (the rest are small and end the request).
DROPPABLE = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error"})


class Replies:
    def __init__(self, max_bytes: int | None = None, on_drop: Callable[[], None] | None = None) -> None:
        self.max_bytes = max_bytes
        #: Called for each message dropped (the gateway counts them in /metrics).
        self.on_drop = on_drop
        #: Bytes of the messages waiting to be taken.
        self.pending_bytes = 0
        #: Output messages dropped so far.
        self.dropped = 0
        self._dropping = False
        self._items: collections.deque[_Item] = collections.deque()
        #: display id -> its update_display_data waiting to be taken (a later one replaces it).
        self._updates: dict[str, _Item] = {}
        self._arrived = asyncio.Event()

    def offer(self, channel: str, message: Message) -> None:
        """Queue a message for the request (or drop it, if it is output arriving past the bound)."""
        size = sum(len(part) for part in message.parts)
        if channel == "iopub" and message.msg_type in DROPPABLE and self.max_bytes is not None:
            if self.pending_bytes + size > self.max_bytes:
                self._overflow(message, size)
                return
            self._dropping = False
        try:
            item = _Item(channel, message.full(), size)
        except BadMessage as bad:
            if bad.reason != TOO_DEEP or channel != "iopub" or message.msg_type not in DROPPABLE:
                raise
            self._put(_Item("nested", message.msg_type, size))
            return
        if message.msg_type == "update_display_data":
            display_id = _display_id(item.msg)
            if display_id is not None:
                self._updates[display_id] = item
        self._put(item)

    def _overflow(self, message: Message, size: int) -> None:
        if message.msg_type == "update_display_data":
            # Only a display's latest content matters: it replaces the update still waiting, so
            # what a display ends up showing is never lost, however fast it is updated.
            msg = message.full()
            waiting = self._updates.get(_display_id(msg) or "")
            if waiting is not None:
                self.pending_bytes += size - waiting.size
                waiting.msg, waiting.size = msg, size
                return
        if self.on_drop is not None:
            self.on_drop()
        self.lost(OUTRAN)

    def lost(self, reason: str) -> None:
        """Note an output message lost (dropped here, or before: ``OVERSIZED``): the reader is told
        ``("dropped", reason)`` once per run of losses."""
        self.dropped += 1
        if not self._dropping:
            self._dropping = True
            self._put(_Item("dropped", reason, 0))

    def put_nowait(self, item: tuple[str, Any]) -> None:
        """Queue something that is not a kernel message (``("gone", KernelGone(...))``)."""
        self._put(_Item(item[0], item[1], 0))

    def _put(self, item: _Item) -> None:
        self.pending_bytes += item.size
        self._items.append(item)
        self._arrived.set()

    async def get(self) -> tuple[str, Any]:
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items.popleft()
        self.pending_bytes -= item.size
        if item.channel == "iopub" and item.msg["header"].get("msg_type") == "update_display_data":
            display_id = _display_id(item.msg)
            if display_id is not None and self._updates.get(display_id) is item:
                del self._updates[display_id]
        return item.channel, item.msg


class _Item:
    __slots__ = ("channel", "msg", "size")

    def __init__(self, channel: str, msg: Any, size: int) -> None:
        self.channel = channel
        self.msg = msg
        self.size = size


def _display_id(msg: dict[str, Any]) -> str | None:
    transient = msg.get("content", {}).get("transient")
    display_id = transient.get("display_id") if isinstance(transient, dict) else None
    return display_id if isinstance(display_id, str) else None
