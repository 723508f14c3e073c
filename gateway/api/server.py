"""The HTTP server: Tornado's, with Nagle's algorithm off on every client connection.

Tornado sets TCP_NODELAY only on WebSocket streams; on plain HTTP keep-alive connections a
small response could otherwise wait ~40 ms for the client's delayed ACK.
"""

from __future__ import annotations

from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream


class NoDelayHTTPServer(HTTPServer):
    def handle_stream(self, stream: IOStream, address: Any) -> None:
        stream.set_nodelay(True)
        super().handle_stream(stream, address)
