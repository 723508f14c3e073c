"""``UncopiedFrames.write_pieces`` against a client that leaves while a large frame is on its way.

A real Tornado server on loopback and a real client socket: the client reads the upgrade, then
closes while the server writes a 64 MiB frame (more than a socket buffer takes), so the write
fails after ``write_pieces`` returned. Its future must fail as ``write_message``'s does
(``WebSocketClosedError``, which the senders catch), not with the stream's own error, which
escaped ``/stream``'s sender and killed its task with "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

from tornado import httpserver, web, websocket
from tornado.iostream import StreamClosedError

from gateway.api.streams import UncopiedFrames

FRAME = 64 << 20


class Sender(UncopiedFrames):
    def open(self) -> None:  # type: ignore[override]
        asyncio.get_running_loop().create_task(self.send_large())

    async def send_large(self) -> None:
        written = self.write_pieces([b'"', b"x" * FRAME, b'"'])
        self.application.settings["started"].set_result(None)
        try:
            await written
        except (websocket.WebSocketClosedError, StreamClosedError) as exc:
            self.application.settings["outcome"].set_result(exc)
        else:
            self.application.settings["outcome"].set_result(None)


async def test_a_client_leaving_during_a_large_frame_closes_it_as_a_websocket() -> None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    outcome: asyncio.Future[BaseException | None] = loop.create_future()
    app = web.Application([(r"/ws", Sender)], started=started, outcome=outcome)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server = httpserver.HTTPServer(app)
    server.add_sockets([listener])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(started, 30)
        await reader.readexactly(1 << 16)  # part of the frame: it is on its way
        writer.transport.abort()  # gone, the rest unread
        exc = await asyncio.wait_for(outcome, 60)
        assert isinstance(exc, websocket.WebSocketClosedError), repr(exc)
    finally:
        server.stop()
        await server.close_all_connections()
