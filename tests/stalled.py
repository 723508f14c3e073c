"""Clients that never read: raw TCP connections with a tiny receive buffer, for backpressure attacks.

    client = await StalledClient.open(port)
    await client.post("/api/v1/sandboxes/ID/execute", body, {"Accept": "application/x-ndjson", ...})
    await client.upgrade("/api/kernels/ID/channels?session_id=1", headers)   # a WebSocket, then silence
    await client.send_text('{"type": "execute", ...}')                      # frames out, nothing read
    data = await client.read_all()                                           # later: what got through

Once its (small) buffers are full, the kernel's TCP window closes: everything else the server
wants to send piles up on the server's side, which is what the attack needs.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Any

#: Bytes the stalled client's socket buffers; the reader's own buffer is as small.
RECEIVE_BUFFER = 4096


class StalledClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> StalledClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        """Send a request and read none of the answer."""
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def upgrade(self, path: str, headers: dict[str, str]) -> None:
        """Open a WebSocket (reading only the 101 answer)."""
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 60)
        assert answer.startswith(b"HTTP/1.1 101"), answer

    async def send_text(self, text: str) -> None:
        self.writer.write(masked_frame(text.encode()))
        await self.writer.drain()

    def unstall(self) -> None:
        """Read quickly from now on (a large receive buffer): what the server sent before it closed
        must arrive before its close handshake times out (Tornado aborts after 5 s)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)

    async def read_all(self, timeout: float = 60) -> bytes:
        """Everything the server still sends, until it closes the connection."""
        chunks = []
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(1 << 20):
                chunks.append(chunk)
        return b"".join(chunks)

    async def read_until(self, marker: bytes, timeout: float = 60) -> bytes:
        """What the server sends, up to and including ``marker``."""
        async with asyncio.timeout(timeout):
            data = b""
            while marker not in data:
                chunk = await self.reader.read(1 << 20)
                if not chunk:
                    raise AssertionError(f"the connection closed before {marker!r} arrived: {data[-500:]!r}")
                data += chunk
        return data

    def close(self) -> None:
        self.writer.close()


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client-to-server WebSocket frame (clients must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each complete server-to-client frame in ``data``."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size == 126:
            size, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        if at + size > len(data):
            break
        frames.append((opcode, data[at:at + size]))
        at += size
    return frames


def close_frame(data: bytes) -> tuple[int, str] | None:
    """The code and reason of the close frame in ``data``, if one arrived."""
    for opcode, payload in server_frames(data):
        if opcode == 0x8 and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    return None


def memory_of(pid: int) -> dict[str, int]:
    """A process's resident set now and at its peak, in bytes (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(re.findall(r"^(Vm\w+):\s+(\d+) kB", status.read(), re.M))
    return {"rss": int(fields["VmRSS"]) << 10, "peak": int(fields["VmHWM"]) << 10}


def metric(text: str, name: str, **labels: Any) -> float:
    """One sample of a Prometheus exposition (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
