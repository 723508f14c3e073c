"""The HTTP server: Tornado's, with a cap on open connections and Nagle's algorithm off for good.

    server = GatewayHTTPServer(BoundedBodiesApplication(web_app, limit=1 << 30), max_connections=4096,
                               idle_connection_timeout=75, max_body_size=64 << 20)

**Connections.** At most ``max_connections`` client connections are open at once, whatever they
carry (plain requests, NDJSON/SSE streams, WebSockets, forwarded traffic): one over it is accepted
and closed at once, before a byte of it is read, and those open go on as they were. A connection
counts from its accept until its stream closes, whoever closes it (Tornado's HTTP code, a
WebSocket, a forwarding relay): Tornado's own list of connections lets go of a WebSocket's once
it is upgraded, so it would not do.

**Nagle.** Tornado sets TCP_NODELAY only on WebSocket streams; on plain HTTP keep-alive
connections a small response could otherwise wait ~40 ms for the client's delayed ACK. Tornado
also turns it on before each response's last write and off again after it: two system calls per
request that change nothing once it stays on, so a connection's stream keeps it on and ignores them.

The application may be an ``HTTPServerConnectionDelegate`` that wants to hear when a connection
closes (``BoundedBodiesApplication`` does): this server tells it, where Tornado's does not.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerConnectionDelegate
from tornado.iostream import IOStream

log = logging.getLogger(__name__)

#: Seconds between two warnings about the same kind of refusal (a flood would otherwise flood the log too).
REFUSALS_LOGGED_EVERY = 60.0


class Refusals:
    """What the server turned away for one reason: counted, and said in a warning at most once a minute."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.total = 0
        self._unlogged = 0
        self._logged_at = -math.inf

    def add(self) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSALS_LOGGED_EVERY:
            log.warning("%s (%d since the last such line, %d in all)", self.what, self._unlogged, self.total)
            self._logged_at, self._unlogged = now, 0


class ClientStream(IOStream):
    """A client connection: TCP_NODELAY on from the start and for good; one of its server's open
    connections until it closes."""

    server: GatewayHTTPServer
    counted = False

    def set_nodelay(self, value: bool) -> None:
        pass  # (on already: see handle_stream; Nagle back on would delay a streamed event)

    def close(
        self,
        exc_info: None | bool | BaseException
        | tuple[type[BaseException] | None, BaseException | None, TracebackType | None] = False,
    ) -> None:
        super().close(exc_info)
        if self.counted:
            self.counted = False
            self.server.open_connections -= 1


class GatewayHTTPServer(HTTPServer):
    #: Client connections open now.
    open_connections = 0

    def initialize(  # type: ignore[override]
            self, request_callback: Any, *, max_connections: int, **options: Any) -> None:
        super().initialize(request_callback, **options)
        self.max_connections = max_connections
        self.refused_connections = Refusals(
            f"new connections closed at once: {max_connections} are open, the most --max-connections allows")

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if self.open_connections >= self.max_connections:
            self.refused_connections.add()
            stream.close()
            return
        stream.set_nodelay(True)
        assert type(stream) is IOStream, "the gateway listens without TLS: a stream is a plain IOStream"
        stream.__class__ = ClientStream
        assert isinstance(stream, ClientStream)
        stream.server, stream.counted = self, True
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        if isinstance(self.request_callback, HTTPServerConnectionDelegate):
            self.request_callback.on_close(server_conn)
