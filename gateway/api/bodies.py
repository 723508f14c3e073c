"""A memory budget for request bodies: what Tornado holds of them, over every connection at once,
stays under one limit (``--max-buffered-body-bytes``).

    server = GatewayHTTPServer(BoundedBodiesApplication(web_app, limit=1 << 30), max_connections=4096)

Tornado bounds one body (``max_body_size``), not their sum: a few thousand connections each
sending a large body would hold them all in memory at once. Here every chunk a request's message
delegate receives is counted against one budget shared by every connection:

- a buffered body (a handler that reads ``request.body``) holds its bytes until its request is
  over: until its connection starts its next request (Tornado starts it once the answer is
  written) or closes;
- a streamed body (``@stream_request_body``: file uploads) holds a chunk only while its handler
  takes it: the delegate hands back an awaitable for it, and once that is done the chunk has been
  passed on (to the sandbox, for an upload), so a streamed upload holds at most one chunk.

A request whose next chunk does not fit goes no further: its handler hears that the connection
closed (what it had is dropped at once; an upload is abandoned), the rest of its body is read and
thrown away, then it is answered ``503 server_busy`` with ``Retry-After: 5`` and its connection
closed. Reading the body first is what lets the client see that answer: a server that answers and
closes while the client is still sending makes the client's TCP stack reset the connection, and
the answer is lost with it.

A body must also keep arriving: one that stops for ``stall_timeout`` seconds (the gateway's
``--idle-connection-timeout``) has its connection closed and what it held given back, as a
connection that stops halfway through its headers is. Time its handler takes over a chunk (an
upload's chunk on its way to the sandbox), or before it wants the body, is not the client's and
is not counted; a body that trickles in, however slowly in all, is read to its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)

from gateway import jsonbytes
from gateway.api.base import cors_headers, error_body, origin_of
from gateway.api.server import Refusals
from gateway.errors import ServerBusy
from gateway.execution.outputs import human_size

log = logging.getLogger(__name__)

#: The default of ``GatewayApp.max_buffered_body_bytes``.
DEFAULT_BODY_BUDGET = 1 << 30
#: The most one chunk holds (Tornado's read size): a smaller budget could refuse every streamed upload.
CHUNK = 64 << 10


class BodyBudget:
    """Bytes of request bodies held in memory, over every connection, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes if they fit; False (nothing counted) if they do not."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class BoundedBodiesApplication(HTTPServerConnectionDelegate):
    """``application`` (a Tornado ``Application``), each request's body counted against one ``BodyBudget``.

    It needs a server that tells it when a connection closes: ``GatewayHTTPServer`` does.
    """

    def __init__(self, application: HTTPServerConnectionDelegate, limit: int, stall_timeout: float = 75.0,
                 allow_origins: list[str] | None = None) -> None:
        """``allow_origins``: as the handlers' (``--allow-origins``), so a page of one can read a 503."""
        self.application = application
        self.budget = BodyBudget(limit)
        self.stall_timeout = stall_timeout
        self.allow_origins = allow_origins or []
        self.refusals = Refusals(f"request bodies refused (503 server_busy): with them, the bodies in memory "
                                 f"would pass {human_size(limit)}, the most --max-buffered-body-bytes allows")
        self.stalls = Refusals(f"connections closed: their request's body stopped arriving for {stall_timeout:g} s "
                               "(--idle-connection-timeout)")
        #: The request each connection is reading or answering now (one at a time: HTTP/1.1 in Tornado).
        self._current: dict[object, BoundedBody] = {}

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        assert isinstance(request_conn, HTTP1Connection)
        self._end(server_conn)  # (its last request is answered: only then does Tornado start the next)
        message = BoundedBody(self.application.start_request(server_conn, request_conn), request_conn, self)
        self._current[server_conn] = message
        return message

    def on_close(self, server_conn: object) -> None:
        self._end(server_conn)
        self.application.on_close(server_conn)

    def _end(self, server_conn: object) -> None:
        message = self._current.pop(server_conn, None)
        if message is not None:
            message.release()

    def busy(self) -> ServerBusy:
        limit = human_size(self.budget.limit)
        return ServerBusy(f"the request bodies in the gateway's memory would pass {limit} "
                          "(--max-buffered-body-bytes) with this one: it was read and dropped; "
                          "send it again in a few seconds")


class BoundedBody(HTTPMessageDelegate):
    """One request's message delegate, its body counted against the budget (see the module's docstring)."""

    def __init__(self, delegate: HTTPMessageDelegate, connection: HTTP1Connection,
                 bodies: BoundedBodiesApplication) -> None:
        self.delegate = delegate
        self.connection = connection
        self.bodies = bodies
        #: Bytes of this body counted against the budget now.
        self.held = 0
        #: Over the budget: the rest of the body is read and dropped, then the 503 is sent.
        self.refused = False
        #: Closes the connection if the body stops arriving (armed while the client is to send it).
        self._stall: asyncio.TimerHandle | None = None
        self._over = False
        #: The request's headers (for the 503's CORS headers, made only if it is sent).
        self._headers = HTTPHeaders()

    def headers_received(self, start_line: RequestStartLine | ResponseStartLine,
                         headers: HTTPHeaders) -> Awaitable[None] | None:
        preparing = self.delegate.headers_received(start_line, headers)
        if not _has_body(headers):
            return preparing
        self._headers = headers
        if preparing is None:
            self._watch()
            return None
        return self._watch_after(preparing)  # (the handler's own time before it wants the body)

    async def _watch_after(self, preparing: Awaitable[None]) -> None:
        await preparing
        self._watch()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._watch()
        if self.refused:
            return None  # (drained)
        if not self.bodies.budget.take(len(chunk)):
            self._refuse()
            return None
        self.held += len(chunk)
        taking = self.delegate.data_received(chunk)
        if taking is None:
            return None  # buffered: held until the request is over
        self._unwatch()  # (until the handler has taken it: its time is not the client's)
        return self._passed_on(taking, len(chunk))

    async def _passed_on(self, taking: Awaitable[None], size: int) -> None:
        try:
            await taking
        finally:
            self._give_back(size)
        self._watch()

    def _watch(self) -> None:
        """(Re)start the wait for the rest of the body."""
        self._unwatch()
        if not self._over:
            self._stall = asyncio.get_running_loop().call_later(self.bodies.stall_timeout, self._stalled)

    def _unwatch(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        self.bodies.stalls.add()
        log.info("closed a connection whose request body stopped arriving for %g s", self.bodies.stall_timeout)
        self.connection.close()  # (on_connection_close gives back what it held, and tells the handler)

    def finish(self) -> None:
        self._over = True
        self._unwatch()
        if self.refused:
            self._answer(self.bodies.busy())
        else:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self._over = True
        self._unwatch()
        self.release()
        if not self.refused:  # (told already)
            self.delegate.on_connection_close()

    def release(self) -> None:
        """Give back all this request holds (idempotent)."""
        self._give_back(self.held)

    def _give_back(self, size: int) -> None:
        size = min(size, self.held)  # (released already, when the connection closed under a streamed chunk)
        self.held -= size
        self.bodies.budget.give_back(size)

    def _refuse(self) -> None:
        self.refused = True
        self.release()
        self.bodies.refusals.add()
        # The request never reaches its handler (a streamed one's hears its connection close): what
        # was buffered of it goes now, and an upload is abandoned.
        self.delegate.on_connection_close()

    def _answer(self, error: ServerBusy) -> None:
        """Answer ``error`` as every handler answers errors, then close the connection (so nothing else
        of this client's is read past a body the gateway had no room for)."""
        body = jsonbytes.dumps(error_body(error.code, error.message))
        # (Host as Tornado reads it for a request: the handlers compare the origin with the same)
        cors = cors_headers(origin_of(self._headers), self._headers.get("Host") or "127.0.0.1",
                            self.bodies.allow_origins)
        headers = HTTPHeaders({"Content-Type": "application/json; charset=UTF-8",
                               "Content-Length": str(len(body)), "Cache-Control": "no-store",
                               "Retry-After": str(error.retry_after), "Connection": "close", **cors})
        start = ResponseStartLine("HTTP/1.1", error.status, HTTPStatus(error.status).phrase)
        written = self.connection.write_headers(start, headers, body)
        self.connection.finish()
        written.add_done_callback(self._close)

    def _close(self, _: Any) -> None:
        self.connection.close()


def _has_body(headers: HTTPHeaders) -> bool:
    """Whether the request says a body follows (one Tornado will read)."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return True
    try:
        return int(headers.get("Content-Length", "0")) > 0
    except ValueError:
        return False  # (Tornado refuses it)
