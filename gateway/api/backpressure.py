"""Bounded send buffers: a client that falls too far behind is cut off, never allowed to grow the gateway.

What a client is "behind" by is the bytes published to it that it has not taken yet, not counting
the message being written to it right now (so one large output always gets through). Past the
limit (``GatewayApp.max_send_buffer_bytes``, 32 MiB by default) a WebSocket is closed with code
1008 and a reason saying so, and an HTTP stream ends with an ``error`` event; the executions go
on and are stored.

    watch = BehindWatch(limit, behind=lambda: cursor.behind, overrun=cut_off)   # awaited writes
    watch.start(); ...; watch.stop()

    end_stream(handler, last_event_bytes)       # cut off: the last words, then the end (or the connection)

    unsent = UnsentBytes()                       # writes Tornado buffers without anyone awaiting them
    if unsent.would_pass(limit, len(message)): cut_off()
    else: unsent.add(len(message), handler.write_message(message))
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from tornado import web
from tornado.http1connection import HTTP1Connection

from gateway.execution.outputs import human_size

log = logging.getLogger(__name__)

#: The default of ``GatewayApp.max_send_buffer_bytes``.
DEFAULT_SEND_BUFFER = 32 << 20
#: The WebSocket close code of a client cut off for being too slow (RFC 6455: policy violation).
TOO_SLOW_CLOSE_CODE = 1008
#: How often a client whose writes are awaited is checked while it is stuck.
CHECK_INTERVAL = 0.5
#: Seconds a client cut off from an HTTP stream has to take its last event before its connection is closed.
CUT_GRACE = 5.0
#: The ``error`` event's code when an HTTP stream is ended for a slow client.
TOO_SLOW = "client_too_slow"


def too_slow_reason(limit: int) -> str:
    """The close reason (a WebSocket allows 123 bytes)."""
    return f"client too slow: more than {human_size(limit)} waiting to be sent"


def too_slow_message(limit: int, execution_id: str) -> str:
    return (f"the client fell more than {human_size(limit)} behind this stream; the execution goes on and is "
            f"stored: GET /api/v1/executions/{execution_id}")


def end_stream(handler: web.RequestHandler, last: bytes) -> None:
    """End the HTTP stream of a client cut off: ``last`` (what says why), then the end of the
    response; if the client does not take even that within ``CUT_GRACE`` seconds, its connection."""
    handler.write(last)
    ended = handler.finish()
    connection = handler.request.connection
    if isinstance(connection, HTTP1Connection):
        asyncio.get_running_loop().call_later(
            CUT_GRACE, lambda: None if ended.done() else connection.stream.close())


class BehindWatch:
    """Checks, while a writer may be stuck on a client that does not read, how far behind it is."""

    def __init__(self, limit: int, *, behind: Callable[[], int], overrun: Callable[[], None]) -> None:
        self.limit = limit
        self.behind = behind
        self.overrun = overrun
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="send-buffer-watch")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while self.behind() <= self.limit:
            await asyncio.sleep(CHECK_INTERVAL)
        self._task = None
        self.overrun()


class UnsentBytes:
    """Bytes handed to Tornado for one client and not yet written to its socket."""

    def __init__(self) -> None:
        self._sizes: collections.deque[int] = collections.deque()
        self.total = 0

    def would_pass(self, limit: int, size: int) -> bool:
        """Whether sending ``size`` more bytes would leave more than ``limit`` waiting behind the
        message being written now."""
        writing = self._sizes[0] if self._sizes else 0
        return bool(self._sizes) and self.total - writing + size > limit

    def add(self, size: int, written: asyncio.Future[Any]) -> None:
        self._sizes.append(size)
        self.total += size
        written.add_done_callback(self._written)

    def _written(self, _: asyncio.Future[Any]) -> None:
        # Tornado completes write futures in the order of the writes.
        self.total -= self._sizes.popleft()
