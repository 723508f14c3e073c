"""A TCP connection the bench's HTTP client reads as a lean client would: a body of known size
(a ``Content-Length`` response, a chunk of a chunked one) arrives straight into one buffer of
its own, never copied after.

    reader, transport = await connect(port)
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    body = await reader.readexactly(length)          # a bytearray: orjson parses it as it is

``asyncio.StreamReader`` grows one buffer as data comes and copies out what is read, so a 40 MiB
answer (a 20 MiB flood's response: its outputs and its ``stdout``) cost the client three copies
of it, about 50 ms on 2 cores, billed to the server measured. ZeroMQ hands jupyter_client (the
raw baseline) each kernel message in a buffer of its own, without such copies.
"""

from __future__ import annotations

import asyncio

#: Reads of this size and up go straight into their own buffer; smaller ones through ``_pending``.
DIRECT = 1 << 16
_SCRATCH = 1 << 18


class ByteReader(asyncio.BufferedProtocol):
    """One connection's incoming bytes, read in order by one reader at a time."""

    def __init__(self) -> None:
        self._scratch = bytearray(_SCRATCH)
        #: Bytes received that no read has taken yet.
        self._pending = bytearray()
        #: The buffer a direct read fills, and how much of it is filled.
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None

    # -- asyncio.BufferedProtocol ----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled:]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._target = None  # (full: what comes next is pending, even before the read resumes)
                self._wake()
            return
        self._pending += memoryview(self._scratch)[:nbytes]
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    # -- reads -----------------------------------------------------------------------------------

    async def readuntil(self, separator: bytes) -> bytes:
        """Up to and including ``separator`` (a line, a head)."""
        searched = 0
        while (end := self._pending.find(separator, searched)) == -1:
            searched = max(0, len(self._pending) - len(separator) + 1)
            await self._more()
        end += len(separator)
        taken = bytes(self._pending[:end])
        del self._pending[:end]
        return taken

    async def readexactly(self, size: int) -> bytearray:
        """The next ``size`` bytes; a large read goes straight into the buffer returned."""
        if size < DIRECT or len(self._pending) >= size:
            while len(self._pending) < size:
                await self._more()
            taken = self._pending[:size]
            del self._pending[:size]
            return taken
        body = bytearray(size)
        view = memoryview(body)
        self._filled = len(self._pending)
        view[:self._filled] = self._pending
        self._pending.clear()
        self._target = view
        try:
            while self._filled < size:
                await self._more()
        finally:
            self._target = None
        return body

    async def _more(self) -> None:
        if self._eof:
            raise asyncio.IncompleteReadError(bytes(self._pending), None) from self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def connect(port: int, host: str = "127.0.0.1") -> tuple[ByteReader, asyncio.Transport]:
    """A connection to ``host:port`` (asyncio sets TCP_NODELAY on it)."""
    transport, reader = await asyncio.get_running_loop().create_connection(ByteReader, host, port)
    return reader, transport
