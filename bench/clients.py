"""The clients the benchmarks time: lean on purpose, so the figures are the servers', not the clients'.

    http = await HttpConnection.open(port, {"Authorization": "Bearer KEY"})
    status, body = await http.request("POST", "/api/v1/sandboxes/ID/execute", {"code": "1+1"})
    execution = await rest_execute(http, sandbox_id, "1+1")          # raises unless it completed
    await ws_execute(socket, "1+1")                                   # our /stream WebSocket
    await channels_execute(socket, "1+1")                             # Jupyter channels (ours or KG's)
    await raw_execute(kernel_client, "1+1")                           # jupyter_client, no gateway

Every WebSocket client is ``websockets`` (asyncio, compression off); HTTP is a raw HTTP/1.1
keep-alive connection (``bench.wire``: a body read straight into a buffer of its own), so no
client library's overhead weighs on one method more than another. Every answer is parsed with orjson, as
jupyter_client (the raw baseline) parses the kernel's messages when orjson is installed: the
servers are compared, not two JSON parsers. Requests stay the standard library's (small; a
WebSocket text frame needs ``str``). WebSocket answers are read as bytes (``recv(decode=False)``:
orjson checks their UTF-8 as it parses, so no ``str`` of a large frame is made first), and an
NDJSON stream is parsed line by line as it arrives (``Lines``), as a streaming client reads it,
with no copy of the whole body.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson
import websockets

from bench import wire

TIMEOUT = 120.0
#: A response body or a chunk of one, as ``bench.wire`` reads it.
Body = bytes | bytearray


class HttpError(Exception):
    pass


class HttpConnection:
    """One persistent HTTP/1.1 connection (Content-Length and chunked bodies)."""

    def __init__(self, reader: wire.ByteReader, writer: asyncio.Transport, port: int,
                 headers: dict[str, str]) -> None:
        self.reader = reader
        self.writer = writer
        self.port = port
        self.headers = headers
        #: The last answer said ``Connection: close`` (a replica forwarding a request does): reconnect.
        self.closing = False

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> HttpConnection:
        reader, writer = await wire.connect(port)
        return cls(reader, writer, port, headers or {})

    async def close(self) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      on_chunk: Callable[[Body], None] | None = None,
                      keep_chunks: bool = True) -> tuple[int, Body]:
        """One request and its whole response; ``on_chunk`` sees each chunk of a chunked body on arrival
        (``keep_chunks`` False: the chunks are not joined into the body returned, which is then empty)."""
        if self.closing:
            await self.close()
            self.reader, self.writer = await wire.connect(self.port)
            self.closing = False
        data = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in {**self.headers, **(headers or {})}.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return await asyncio.wait_for(self._response(on_chunk, keep_chunks), TIMEOUT)

    async def _response(self, on_chunk: Callable[[Body], None] | None, keep_chunks: bool) -> tuple[int, Body]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        self.closing = headers.get("connection", "").lower() == "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size) if size else b""
                await self.reader.readexactly(2)  # (its CRLF, read apart: slicing it off copies the chunk)
                if size == 0:
                    break
                if keep_chunks:
                    parts.append(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
            return status, b"".join(parts)
        length = int(headers.get("content-length", "0"))
        return status, await self.reader.readexactly(length) if length else b""

    async def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, data = await self.request(method, path, body)
        if status != expect:
            raise HttpError(f"{method} {path}: {status} {data[:300]!r}")
        return orjson.loads(data) if data else None


def check_completed(execution: dict[str, Any], expect: str | None) -> dict[str, Any]:
    if execution.get("status") != "completed":
        raise HttpError(f"execution {execution.get('status')}: {json.dumps(execution.get('error'))[:300]}")
    if expect is not None and (execution.get("result") or {}).get("text/plain") != expect:
        raise HttpError(f"unexpected result {execution.get('result')!r}, wanted {expect!r}")
    return execution


async def create_sandbox(http: HttpConnection, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return await http.json("POST", "/api/v1/sandboxes", body or {}, expect=201)  # type: ignore[no-any-return]


async def delete_sandbox(http: HttpConnection, sandbox_id: str) -> None:
    await http.json("DELETE", f"/api/v1/sandboxes/{sandbox_id}", expect=204)


async def rest_execute(http: HttpConnection, sandbox_id: str, code: str,
                       expect: str | None = "2") -> dict[str, Any]:
    """``POST .../execute``: the whole Execution as one JSON response."""
    execution = await http.json("POST", f"/api/v1/sandboxes/{sandbox_id}/execute", {"code": code})
    return check_completed(execution, expect)


async def ndjson_execute(http: HttpConnection, sandbox_id: str, code: str, expect: str | None = "2",
                         timeout: float | None = None,
                         on_chunk: Callable[[Body], None] | None = None) -> dict[str, Any]:
    """The same with ``Accept: application/x-ndjson``: read every line to the final Execution."""
    body: dict[str, Any] = {"code": code} if timeout is None else {"code": code, "timeout": timeout}
    lines = Lines()

    def chunk(data: Body) -> None:
        if on_chunk is not None:
            on_chunk(data)
        lines.feed(data)

    status, data = await http.request("POST", f"/api/v1/sandboxes/{sandbox_id}/execute", body,
                                      headers={"Accept": "application/x-ndjson"}, on_chunk=chunk,
                                      keep_chunks=False)
    if status != 200:
        raise HttpError(f"ndjson execute: {status} {data[:300]!r}")
    if not lines.events:
        raise HttpError("ndjson execute: the stream held no event")
    last = lines.events[-1]
    if last.get("type") != "execution":
        raise HttpError(f"stream ended with {last.get('type')}")
    return check_completed(last["execution"], expect)


class Lines:
    """NDJSON read as it arrives, as a streaming client reads it: each line parsed once it is whole,
    its pieces joined only when a line spans chunks (never the whole body, nor copies of it)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._partial: list[bytes | memoryview] = []

    def feed(self, data: Body) -> None:
        view = memoryview(data)
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            line: bytes | memoryview = view[start:end]
            if self._partial:
                line = b"".join([*self._partial, line])
                self._partial = []
            if len(line):
                self.events.append(orjson.loads(line))
            start = end + 1
        if start < len(data):
            self._partial.append(view[start:])


def ws_connect(url: str, headers: dict[str, str]) -> Any:
    return websockets.connect(url, additional_headers=headers, max_size=None, compression=None,
                              ping_interval=None, open_timeout=60)


async def ws_execute(socket: Any, code: str, expect: str | None = "2") -> dict[str, Any]:
    """Our ``/stream`` WebSocket: one execute message, events until its ``execution``."""
    request_id = uuid.uuid4().hex
    await socket.send(json.dumps({"type": "execute", "id": request_id, "code": code}))
    while True:
        event = orjson.loads(await asyncio.wait_for(socket.recv(decode=False), TIMEOUT))
        if event.get("id") != request_id:
            continue
        if event["type"] == "error":
            raise HttpError(f"ws error: {event['error']}")
        if event["type"] == "execution":
            return check_completed(event["execution"], expect)


def _jupyter_message(code: str, session: str) -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    return {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench", "session": session,
                   "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


def quickack(socket: Any) -> None:
    """Acknowledge at once what arrives next (Linux resets this after a while: call it per message).

    Counters a server that leaves Nagle's algorithm on: its second small message in a row then
    need not wait ~40 ms for our delayed ACK of the first.
    """
    import socket as sockets

    raw = socket.transport.get_extra_info("socket")
    raw.setsockopt(sockets.IPPROTO_TCP, sockets.TCP_QUICKACK, 1)


async def channels_execute(socket: Any, code: str, session: str, expect: str | None = "2",
                           ack_at_once: bool = False) -> list[dict[str, Any]]:
    """Jupyter's channels WebSocket (default JSON protocol): until the execute_reply *and* idle status."""
    request = _jupyter_message(code, session)
    msg_id = request["header"]["msg_id"]
    if ack_at_once:
        quickack(socket)
    await socket.send(json.dumps(request))
    got, reply, idle = [], None, False
    while reply is None or not idle:
        msg = orjson.loads(await asyncio.wait_for(socket.recv(decode=False), TIMEOUT))
        if ack_at_once:
            quickack(socket)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        got.append(msg)
        if msg["msg_type"] == "execute_reply":
            reply = msg
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    check_reply(reply["content"], got, expect)
    return got


async def raw_ready(client: Any, timeout: float = 60.0) -> None:
    """Until the kernel answers on shell *and* iopub (jupyter_client's ``wait_for_ready`` adds a 0.2 s
    iopub drain and 1 s polls; this is the same check without fixed waits, as the gateway does it)."""
    from queue import Empty

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    msg_id = client.kernel_info()
    while (await client.get_shell_msg(timeout=timeout))["parent_header"].get("msg_id") != msg_id:
        pass
    while loop.time() < deadline:  # a SUB socket only receives once its subscription arrived: nudge
        client.kernel_info()
        try:
            await client.get_iopub_msg(timeout=0.05)
            return
        except Empty:
            continue
    raise TimeoutError("the kernel did not answer on iopub")


async def raw_execute(client: Any, code: str, expect: str | None = "2") -> list[dict[str, Any]]:
    """jupyter_client with no gateway: send, read iopub to the idle status, then the shell reply."""
    msg_id = client.execute(code)
    got = []
    while True:
        msg = await client.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = await client.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    check_reply(reply["content"], got, expect)
    return got


def check_reply(content: dict[str, Any], got: list[dict[str, Any]], expect: str | None) -> None:
    if content.get("status") != "ok":
        raise HttpError(f"execute_reply {content.get('status')}: "
                        f"{content.get('ename')} {content.get('evalue')}")
    if expect is not None:
        results = [m["content"]["data"].get("text/plain") for m in got if m["msg_type"] == "execute_result"]
        if results != [expect]:
            raise HttpError(f"unexpected results {results!r}, wanted {expect!r}")
