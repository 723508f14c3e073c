"""A gateway whose store fails for real (SQLite's disk fills up, PostgreSQL's server stops)
acknowledges nothing it has not stored, refuses new work with 503 ``store_unavailable`` and says so on /ready,
and stores everything it held once the database is back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateways import KEYS, InProcessGateway, create, run
from tests.stores import BACKENDS, Backend, backend_for
from tests.waiting import executions_of, until

BIG_OUTPUT = 2_000_000  # characters printed: a record that needs room a full disk does not have


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, request, tmp_path) as chosen:
        yield chosen


async def test_a_failing_store_holds_results_refuses_new_work_and_loses_nothing(
        backend: Backend, tmp_path: Path) -> None:
    args = backend.gateway_args()
    async with InProcessGateway(tmp_path / "data", *args) as gateway, \
            gateway.client("alice") as alice, gateway.client(None) as anonymous:
        sandbox = await create(alice)
        assert (await anonymous.get("/ready")).status_code == 200
        backend.fail()

        # The kernel runs this, but its record cannot be stored: no answer until it is.
        code = f"print('x' * {BIG_OUTPUT})"
        execute = f"/api/v1/sandboxes/{sandbox['id']}/execute"
        held = asyncio.ensure_future(alice.post(execute, json={"code": code}))
        ready = await until(lambda: _not_ready(anonymous), what="/ready to turn 503")
        assert not ready["ready"] and any(word in problem for problem in ready["problems"]
                                          for word in backend.failure_words), ready
        health = (await anonymous.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["store"]["available"] is False and health["store"]["held_writes"] >= 1

        # New work is refused, with the reason, instead of being acknowledged.
        for response in (await alice.post("/api/v1/sandboxes", json={}),
                         await alice.post(execute, json={"code": "1 + 1"}),
                         await alice.delete(f"/api/v1/sandboxes/{sandbox['id']}")):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "store_unavailable", error
            assert any(word in error["message"] for word in backend.failure_words), error
        assert not held.done()

        backend.recover()  # the held records land, and only then is the client answered
        response = await asyncio.wait_for(held, 60)
        assert response.status_code == 200, response.text
        execution = response.json()
        assert execution["status"] == "completed" and len(execution["stdout"]) == BIG_OUTPUT + 1
        assert (await anonymous.get("/ready")).status_code == 200
        assert (await run(alice, sandbox["id"], "1 + 1"))["result"]["text/plain"] == "2"

    # Durable: a new gateway on the same store finds the result; the refused work left no trace.
    async with InProcessGateway(tmp_path / "data", *args) as gateway, gateway.client("alice") as alice:
        stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
        assert stored["status"] == "completed" and stored["stdout"] == execution["stdout"]
        history = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]
        assert [e["code"] for e in history] == [code, "1 + 1"]
        sandboxes = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
        assert [s["id"] for s in sandboxes] == [sandbox["id"]]


async def _not_ready(client: httpx.AsyncClient) -> Any:
    response = await client.get("/ready")
    return response.json() if response.status_code == 503 else None




class RawWebSocket:
    """A WebSocket client over a plain connection that shows each frame as it comes (a message's
    fragments apart): what a client library would join before anyone saw it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, path: str, key: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n").encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 1 << 16
        size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        self.writer.write(b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def frame(self) -> tuple[bool, int, bytes]:
        """The next frame: whether it ends its message, its opcode, its payload."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size >= 126:
            size = int.from_bytes(await self.reader.readexactly(2 if size == 126 else 8), "big")
        return bool(first & 0x80), first & 0x0F, await self.reader.readexactly(size)


async def test_a_large_answer_leaves_while_its_record_is_held_and_ends_once_it_is_stored(
        backend: Backend, tmp_path: Path) -> None:
    """A large answer's bytes go out while its record commits (here: while the store is down), all
    but its end: no client has the document, nor a streamed one its final event, before it is
    durable. REST, NDJSON and the /stream WebSocket (whose final message comes in two fragments)."""
    go = tmp_path / "go"
    code = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\nprint('x' * {BIG_OUTPUT})"
    ends = {"application/json": b"}", "application/x-ndjson": b"}\n"}
    async with InProcessGateway(tmp_path / "data", *backend.gateway_args()) as gateway, \
            gateway.client("alice") as alice, gateway.client(None) as anonymous:
        sandboxes = {accept: (await create(alice))["id"] for accept in [*ends, "websocket"]}
        sent = {accept: asyncio.ensure_future(alice.send(alice.build_request(
            "POST", f"/api/v1/sandboxes/{sandboxes[accept]}/execute", json={"code": code}, headers={"Accept": accept}),
            stream=True)) for accept in ends}
        socket = await RawWebSocket.open(gateway.app.bound_port, f"/api/v1/sandboxes/{sandboxes['websocket']}/stream",
                                         KEYS["alice"])
        socket.send_text(json.dumps({"type": "execute", "id": "w", "code": code}))
        for sandbox_id in sandboxes.values():  # (accepted: stored as running)
            await until(lambda: executions_of(alice, sandbox_id), lambda e: e and e[-1]["status"] == "running",
                        what="the execution to run")
        backend.fail()
        go.touch()

        async def nothing_more(more: asyncio.Future[Any]) -> None:
            await asyncio.wait({more}, timeout=1.0)
            assert not more.done(), "the answer ended before its record was stored"
            assert (await anonymous.get("/health")).json()["store"]["held_writes"] >= 1

        answers = []
        for accept, end in ends.items():
            response = await asyncio.wait_for(sent[accept], 60)
            assert response.status_code == 200
            chunks = response.aiter_raw()
            received = bytearray()
            if accept == "application/json":
                def all_but_the_end() -> bool:
                    return len(received) == int(response.headers["Content-Length"]) - len(end)
            else:  # the last event's last field: the execution's id
                def all_but_the_end() -> bool:
                    return received.endswith(b'"execution_id":"%s"' % response.headers["X-Execution-Id"].encode())
            # All of the final Execution but its end arrives (its outputs and stdout: twice the text) ...
            while not all_but_the_end():
                received += await asyncio.wait_for(chunks.__anext__(), 60)
            more = asyncio.ensure_future(chunks.__anext__())
            await nothing_more(more)  # ... and no more while its record is not stored.
            answers.append((response, chunks, received, more, end))
        frames = [await asyncio.wait_for(socket.frame(), 60)]
        while frames[-1][0]:  # (whole messages: accepted, outputs) up to the first fragment of the final one
            frames.append(await asyncio.wait_for(socket.frame(), 60))
        assert frames[-1][1] == 0x1 and b'"type":"execution"' in frames[-1][2]
        more_frames = asyncio.ensure_future(socket.frame())
        await nothing_more(more_frames)

        backend.recover()
        finals = []
        for response, chunks, received, more, end in answers:
            received += await asyncio.wait_for(more, 60)
            async for chunk in chunks:
                received += chunk
            await response.aclose()
            assert received.endswith(end)
            final = json.loads(bytes(received).decode().splitlines()[-1])
            finals.append(final.get("execution", final))
        assert await asyncio.wait_for(more_frames, 60) == (True, 0x0, b"}")  # the continuation that ends it
        finals.append(json.loads(frames[-1][2] + b"}")["execution"])
        socket.writer.close()
        for execution in finals:
            assert execution["status"] == "completed" and len(execution["stdout"]) == BIG_OUTPUT + 1
            stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
            assert stored["stdout"] == execution["stdout"]
