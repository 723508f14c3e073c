"""The HTTP server: Tornado's, with Nagle's algorithm off on every client connection, for good.

Tornado sets TCP_NODELAY only on WebSocket streams; on plain HTTP keep-alive connections a
small response could otherwise wait ~40 ms for the client's delayed ACK. Tornado also turns it
on before each response's last write and off again after it: two system calls per request
that change nothing once it stays on, so a connection's stream keeps it on and ignores them.
"""

from __future__ import annotations

from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream


class NoDelayIOStream(IOStream):
    """A client connection whose TCP_NODELAY is on from the start and stays on."""

    def set_nodelay(self, value: bool) -> None:
        pass  # (on already: see handle_stream; Nagle back on would delay a streamed event)


class NoDelayHTTPServer(HTTPServer):
    def handle_stream(self, stream: IOStream, address: Any) -> None:
        stream.set_nodelay(True)
        if type(stream) is IOStream:  # (an SSLIOStream keeps Tornado's toggling)
            stream.__class__ = NoDelayIOStream
        super().handle_stream(stream, address)
