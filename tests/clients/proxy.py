"""A loopback proxy whose connections a test can cut, to break a client's stream (or engine) for real.

    async with CuttableProxy(gateway_port) as proxy: ...          # 127.0.0.1:<proxy.port> -> the gateway
    async with CuttableProxy(target_path="/var/run/docker.sock", path=tmp / "docker.sock") as proxy:
        proxy.down()      # every connection reset, new ones refused: the engine is unreachable
        proxy.up()
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` (or the unix socket ``path``) to ``target_port`` (or ``target_path``).

    ``cut()`` resets every open connection; ``down()`` also refuses new ones until ``up()``.
    """

    def __init__(self, target_port: int = 0, *, target_path: str | os.PathLike[str] = "",
                 path: str | os.PathLike[str] = "") -> None:
        self.target_port = target_port
        self.target_path = str(target_path)
        self.path = str(path)
        self.port = 0
        self.connections = 0
        self.refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> CuttableProxy:
        if self.path:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"unix://{self.path}" if self.path else f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def down(self) -> None:
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target_path:
            return await asyncio.open_unix_connection(self.target_path)
        return await asyncio.open_connection("127.0.0.1", self.target_port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await self._upstream()
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                sink.write_eof()  # a half-close passes on (a docker exec's end of stdin)
            except Exception:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for each in (writer, up_writer):
            each.transport.abort()
        self._writers -= {writer, up_writer}
