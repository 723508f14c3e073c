"""bench.wire: the benchmarks' HTTP client reads every byte in order, however it arrives, over a real
loopback connection (a large read straight into its own buffer, a small one through what is pending)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bench import wire

Serve = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def served(serve: Serve) -> AsyncIterator[wire.ByteReader]:
    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, transport = await wire.connect(port)
    try:
        yield reader
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_heads_lines_and_bodies_large_and_small_arrive_whole_and_in_order() -> None:
    large = os.urandom(5 << 20)
    small = os.urandom(wire.DIRECT - 1)

    async def serve(writer: asyncio.StreamWriter) -> None:
        # The head and the start of the body in one write: the body's first bytes are pending
        # when the large read begins; the rest comes in pieces with pauses, then a line, a small body.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + large[:1000])
        for start in range(1000, len(large), 777_777):
            writer.write(large[start:start + 777_777])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"3f\r\n" + small + b"\r\n")

    async for reader in served(serve):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        body = await reader.readexactly(len(large))
        assert isinstance(body, bytearray) and body == large
        assert await reader.readuntil(b"\r\n") == b"3f\r\n"
        assert await reader.readexactly(len(small)) == small
        assert await reader.readexactly(2) == b"\r\n"


async def test_a_large_read_that_is_all_pending_already_and_what_follows_it() -> None:
    large = os.urandom(wire.DIRECT * 3)

    async def serve(writer: asyncio.StreamWriter) -> None:
        writer.write(large + b"after\n")

    async for reader in served(serve):
        await asyncio.sleep(0.2)  # (all of it has arrived before the read)
        assert await reader.readexactly(len(large)) == large
        assert await reader.readuntil(b"\n") == b"after\n"


async def test_bytes_right_after_a_large_read_are_kept_for_the_next_read() -> None:
    large = os.urandom(1 << 20)

    async def serve(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)  # (the large read is waiting when its bytes and the next come)
        writer.write(large + b"0\r\n\r\n")

    async for reader in served(serve):
        assert await reader.readexactly(len(large)) == large
        assert await reader.readuntil(b"\r\n") == b"0\r\n"
        assert await reader.readexactly(2) == b"\r\n"


@pytest.mark.parametrize("size", [10, wire.DIRECT * 2])
async def test_a_connection_closed_before_a_read_is_whole_says_so(size: int) -> None:
    async def serve(writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * (size - 1))

    async for reader in served(serve):
        with pytest.raises(asyncio.IncompleteReadError):
            await reader.readexactly(size)
