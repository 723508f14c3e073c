"""A gateway whose store fails for real (SQLite's disk fills up, PostgreSQL's server stops)
acknowledges nothing it has not stored, refuses new work with 503 ``store_unavailable`` and says so on /ready,
and stores everything it held once the database is back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sandboxes import manager as manager_module
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
    """A WebSocket client over a plain connection that shows each data frame as it comes (a
    message's fragments apart: what a client library would join before anyone saw it), and
    answers the server's pings meanwhile, counting them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pings = 0
        self._frames: asyncio.Queue[tuple[bool, int, bytes]] = asyncio.Queue()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, path: str, key: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n").encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        assert len(payload) < 1 << 16
        size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        self.writer.write(bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self.send(0x1, text.encode())

    async def frame(self) -> tuple[bool, int, bytes]:
        """The next data (or close) frame: whether it ends its message, its opcode, its payload."""
        return await self._frames.get()

    async def _read(self) -> None:
        while True:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size >= 126:
                size = int.from_bytes(await self.reader.readexactly(2 if size == 126 else 8), "big")
            fin, opcode, payload = bool(first & 0x80), first & 0x0F, await self.reader.readexactly(size)
            if opcode == 0x9:  # a ping: answered at once, as any client library does
                self.pings += 1
                self.send(0xA, payload)
            elif opcode != 0xA:
                self._frames.put_nowait((fin, opcode, payload))

    def close(self) -> None:
        self._reading.cancel()
        self.writer.close()


#: How long each answer is watched while its record is held (the gateway's keepalive is shorter).
HELD_WATCH = 2.5


async def during(seconds: float, take: Callable[[], Awaitable[Any]]) -> tuple[list[Any], asyncio.Future[Any]]:
    """What ``take()`` gives within ``seconds``, one call after another, and the call still waiting then."""
    got: list[Any] = []
    deadline = asyncio.get_running_loop().time() + seconds
    pending = asyncio.ensure_future(take())
    while (await asyncio.wait({pending}, timeout=max(deadline - asyncio.get_running_loop().time(), 0)))[0]:
        got.append(pending.result())
        pending = asyncio.ensure_future(take())
    return got, pending


async def test_a_large_answer_leaves_while_its_record_is_held_and_ends_once_it_is_stored(
        backend: Backend, tmp_path: Path) -> None:
    """A large answer's bytes go out while its record commits (here: while the store is down), all
    but its end: no client has the document, nor a streamed one its final event, before it is
    durable. REST, NDJSON and the /stream WebSocket (whose final message comes in two fragments).
    Meanwhile the streams stay alive: NDJSON sends a space each keepalive (JSON takes it before the
    event's end), the socket is pinged, and a message sent on it is read and answered after the
    held one (Tornado reads no frame while a reply waits)."""
    go = tmp_path / "go"
    code = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\nprint('x' * {BIG_OUTPUT})"
    ends = {"application/json": b"}", "application/x-ndjson": b"}\n"}
    async with InProcessGateway(tmp_path / "data", *backend.gateway_args(), "--keepalive=1") as gateway, \
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
            # ... and no more while its record is not stored (but spaces, streamed, each keepalive).
            padding, more = await during(HELD_WATCH, chunks.__anext__)
            assert not more.done(), "the answer ended before its record was stored"
            assert b"".join(padding) == (b"" if accept == "application/json" else b" " * len(padding))
            assert accept == "application/json" or len(padding) >= 1, padding
            received += b"".join(padding)
            answers.append((response, chunks, received, more, end))
        frames = [await asyncio.wait_for(socket.frame(), 60)]
        while frames[-1][0]:  # (whole messages: accepted, outputs) up to the first fragment of the final one
            frames.append(await asyncio.wait_for(socket.frame(), 60))
        assert frames[-1][1] == 0x1 and b'"type":"execution"' in frames[-1][2]
        pinged = socket.pings
        socket.send_text("not json")  # answered once the held message has ended: nothing comes between
        meanwhile, more_frames = await during(HELD_WATCH, socket.frame)
        assert meanwhile == [] and socket.pings > pinged  # pinged, pongs read: the socket lives
        assert (await anonymous.get("/health")).json()["store"]["held_writes"] >= 1

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
        fin, opcode, reply = await asyncio.wait_for(socket.frame(), 60)
        assert (fin, opcode) == (True, 0x1) and json.loads(reply)["error"]["code"] == "invalid_json"
        socket.close()
        for execution in finals:
            assert execution["status"] == "completed" and len(execution["stdout"]) == BIG_OUTPUT + 1
            stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
            assert stored["stdout"] == execution["stdout"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_result_the_gateway_stopped_before_storing_is_given_to_no_one(
        backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway stops while the store still fails: the finished executions it held are never
    stored, so no client gets one as a result. REST: 503 ``store_unavailable``, or, for a large
    answer under way, a body cut short; NDJSON: an ``error`` event instead of the final one, or a
    stream cut mid-event; the /stream socket: an ``error`` event, or a close (1011) after the
    held fragment, never its end."""
    monkeypatch.setattr(manager_module, "STOP_WITHIN", 2.0)  # (how long the stop waits for them)
    go = tmp_path / "go"
    wait = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
    codes = {"small": wait + "print(1)", "large": wait + f"print('x' * {BIG_OUTPUT})"}
    gateway = InProcessGateway(tmp_path / "data", *backend.gateway_args())
    await gateway.__aenter__()
    async with gateway.client("alice") as alice, gateway.client(None) as anonymous:
        kinds = [(accept, size) for accept in ("application/json", "application/x-ndjson", "websocket")
                 for size in codes]
        sandboxes = {kind: (await create(alice))["id"] for kind in kinds}
        http = {kind: asyncio.ensure_future(alice.send(alice.build_request(
            "POST", f"/api/v1/sandboxes/{sandboxes[kind]}/execute", json={"code": codes[kind[1]]},
            headers={"Accept": kind[0]}), stream=True)) for kind in kinds if kind[0] != "websocket"}
        sockets = {}
        for kind in kinds[4:]:
            sockets[kind] = await RawWebSocket.open(gateway.app.bound_port, f"/api/v1/sandboxes/{sandboxes[kind]}/stream",
                                                    KEYS["alice"])
            sockets[kind].send_text(json.dumps({"type": "execute", "id": "w", "code": codes[kind[1]]}))
        for sandbox_id in sandboxes.values():
            await until(lambda: executions_of(alice, sandbox_id), lambda e: e and e[-1]["status"] == "running",
                        what="the execution to run")
        backend.fail()
        go.touch()
        await until(lambda: anonymous.get("/health"), lambda r: r.json()["store"]["held_writes"] >= len(kinds),
                    what="every finished execution to be held")
        bodies = {}
        for kind in [k for k in kinds if k[0] != "websocket" and k != ("application/json", "small")]:
            response = await asyncio.wait_for(http[kind], 60)
            assert response.status_code == 200
            bodies[kind] = (response, response.aiter_raw(), bytearray())
        stopping = asyncio.ensure_future(gateway.__aexit__(None, None, None))

        small = await asyncio.wait_for(http[("application/json", "small")], 60)
        assert small.status_code == 503 and json.loads(await small.aread())["error"]["code"] == "store_unavailable"
        for (accept, size), (response, chunks, received) in bodies.items():
            with pytest.raises(httpx.RemoteProtocolError) if size == "large" else contextlib.nullcontext():
                async for chunk in chunks:
                    received += chunk
            await response.aclose()
            if accept == "application/json":  # (the large one: cut short, never whole: what the
                # gateway had not yet handed to its socket when it stopped is lost too)
                assert len(received) < int(response.headers["Content-Length"])
                continue
            lines = bytes(received).split(b"\n")
            if size == "small":
                last = json.loads(lines[-2])
                assert last["type"] == "error" and last["error"]["code"] == "store_unavailable", last
            # (a large one was cut, as pytest.raises shows: in its held final event, or before it
            # if the stop came first; either way no whole line of it is the execution)
            assert all(json.loads(line)["type"] != "execution" for line in lines[:-1] if line.strip())
        for (_, size), socket in sockets.items():
            frames = [await asyncio.wait_for(socket.frame(), 60)]
            while frames[-1][1] != 0x8 and not (frames[-1][1] == 0x1 and b'"type":"error"' in frames[-1][2]):
                frames.append(await asyncio.wait_for(socket.frame(), 60))
            if size == "small":
                assert json.loads(frames[-1][2])["error"]["code"] == "store_unavailable"
            else:
                assert frames[-2][:2] == (False, 0x1) and b'"type":"execution"' in frames[-2][2]  # the held fragment
                assert int.from_bytes(frames[-1][2][:2], "big") == 1011  # then a close, not its end
            assert all(b'"type":"execution"' not in payload for fin, _, payload in frames if fin)
            socket.close()
        await stopping
