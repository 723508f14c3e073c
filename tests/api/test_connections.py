"""The HTTP server under connection and body floods, over real sockets to a real gateway:
``--max-connections`` (one over the cap is closed at once, those open go on, WebSockets count),
``--idle-connection-timeout`` (a connection that sends no request, or stops sending its body, is
closed; one being answered is not) and ``--max-buffered-body-bytes`` (a body past the budget is read, dropped and answered 503
``server_busy`` with Retry-After; streamed uploads hold one chunk at a time; the budget comes back)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.api.bodies import CHUNK
from gateway.app import GatewayApp
from tests.api.test_sockets import connect, receive_until_done
from tests.gateways import InProcessGateway, KEYS, create
from tests.waiting import until

KiB = 1 << 10
#: The bounded gateway's budget for request bodies in memory, which is also its largest body.
BUDGET = 1 << 20


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One client connection over a real socket: what is sent when, and when the server closes it, as
    httpx would not show them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gateway: InProcessGateway) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", gateway.app.bound_port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self, method: str, target: str, length: int | None = None, **headers: str) -> None:
        """A request's start line and headers (then its body with ``send``)."""
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k.replace('_', '-')}: {v}"
                                                                     for k, v in headers.items())]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def response(self) -> Response:
        async with asyncio.timeout(60):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = (line.partition(":") for line in head[1:] if line)
            headers = {name.lower(): value.strip() for name, _, value in fields}
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            else:  # chunked
                body = b""
                while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                    body += (await self.reader.readexactly(size + 2))[:-2]
                await self.reader.readuntil(b"\r\n")
            return Response(int(head[0].split(" ")[1]), headers, body)

    async def get_health(self) -> Response:
        await self.head("GET", "/health")
        return await self.response()

    async def closed_by_server(self) -> bytes:
        """What the server sent before closing the connection (it must close it within 30 s)."""
        async with asyncio.timeout(30):
            try:
                return await self.reader.read()
            except ConnectionResetError:
                return b""

    def close(self) -> None:
        self.writer.close()


# -- connections ------------------------------------------------------------------------------


async def test_connections_over_the_cap_are_closed_at_once_and_those_open_go_on(tmp_path: Path) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-connections=3") as gateway:
        server = gateway.app.server
        async with gateway.client() as alice:
            sandbox = await create(alice)
        await until(lambda: server.open_connections, lambda n: n == 0, what="the client's connection closed")

        # A WebSocket counts as long as it is open (Tornado's own count lets go of it once upgraded).
        async with connect(gateway, sandbox["id"]) as socket:
            first, second = await Client.open(gateway), await Client.open(gateway)
            for client in (first, second):
                assert (await client.get_health()).status == 200
            assert server.open_connections == 3

            over = await Client.open(gateway)  # (the kernel accepts it; the gateway closes it unread)
            assert await over.closed_by_server() == b""
            over.close()
            assert server.refused_connections.total == 1

            # Those open were not touched.
            for client in (first, second):
                assert (await client.get_health()).status == 200
            await socket.send(json.dumps({"type": "execute", "id": "a", "code": "6 * 7"}))
            events = await receive_until_done(socket, 1)
            assert events[-1]["execution"]["result"] == {"text/plain": "42"}

            # One closes: a new one is served.
            first.close()
            await until(lambda: server.open_connections, lambda n: n == 2, what="a connection closed")
            third = await Client.open(gateway)
            assert (await third.get_health()).status == 200
            for client in (second, third):
                client.close()
        await until(lambda: server.open_connections, lambda n: n == 0, what="every connection closed")


async def test_idle_connections_are_closed_and_busy_ones_are_not(tmp_path: Path) -> None:
    idle = 1.0
    async with InProcessGateway(tmp_path / "data", f"--idle-connection-timeout={idle:g}") as gateway:
        async with gateway.client() as alice:
            sandbox = await create(alice)

        async def lifetime(client: Client, since: float) -> float:
            """Seconds from ``since`` (taken before the gateway could start its timer) to the close."""
            assert await client.closed_by_server() == b""
            client.close()
            return time.monotonic() - since

        # Nothing sent, headers begun and never ended (a slow loris), a kept-alive connection after its answer.
        started = time.monotonic()
        silent = await Client.open(gateway)
        loris = await Client.open(gateway)
        await loris.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        kept = await Client.open(gateway)
        await kept.head("GET", "/health")
        answered = time.monotonic()
        assert (await kept.response()).status == 200
        waits = await asyncio.gather(lifetime(silent, started), lifetime(loris, started), lifetime(kept, answered))
        for waited in waits:
            assert idle * 0.9 <= waited < 30

        # A request answered after longer than the timeout is not cut off, nor is its connection.
        busy = await Client.open(gateway)
        code = json.dumps({"code": f"import time; time.sleep({idle * 3:g}); 'slept'"}).encode()
        await busy.head("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", len(code),
                        Authorization=f"Bearer {KEYS['alice']}", Content_Type="application/json")
        await busy.send(code)
        answer = await busy.response()
        assert answer.status == 200 and answer.json()["result"] == {"text/plain": "'slept'"}
        await busy.head("GET", "/health")
        answered = time.monotonic()
        assert (await busy.response()).status == 200
        assert await lifetime(busy, answered) >= idle * 0.9


async def test_a_body_that_stops_arriving_is_cut_and_one_that_trickles_in_is_read(tmp_path: Path) -> None:
    """A slow loris that sends its headers and then a body that never ends holds nothing for
    longer than the idle timeout; a body that keeps coming, however slowly in all, is answered,
    and an upload's time in the sandbox is not the client's."""
    idle = 1.0
    async with InProcessGateway(tmp_path / "data", f"--idle-connection-timeout={idle:g}") as gateway:
        async with gateway.client() as alice:
            sandbox = await create(alice)
        auth = {"Authorization": f"Bearer {KEYS['alice']}", "Content_Type": "application/json"}
        execute = f"/api/v1/sandboxes/{sandbox['id']}/execute"
        code = json.dumps({"code": "6 * 7"}).encode()

        # Half a body, then nothing: closed, and what it held is given back.
        loris = await Client.open(gateway)
        await loris.head("POST", execute, len(code), **auth)
        await loris.send(code[:5])
        await until_held(gateway, 5)
        sent = time.monotonic()
        assert await loris.closed_by_server() == b""
        assert idle * 0.9 <= time.monotonic() - sent < 30
        loris.close()
        assert held(gateway) == 0 and gateway.app.bodies.stalls.total == 1

        # A body sent a byte at a time, half the timeout apart: longer than the timeout in all, answered.
        slow = await Client.open(gateway)
        await slow.head("POST", execute, len(code), **auth)
        started = time.monotonic()
        for at in range(0, len(code), len(code) // 5):
            await asyncio.sleep(idle / 2)
            await slow.send(code[at:at + len(code) // 5])
        answer = await slow.response()
        assert time.monotonic() - started > idle * 2
        assert answer.status == 200 and answer.json()["result"] == {"text/plain": "42"}
        slow.close()

        # A streamed upload (its chunks passed on to the sandbox one at a time) trickling in goes through.
        data = bytes(range(256)) * 1024
        upload = await Client.open(gateway)
        await upload.head("PUT", f"/api/v1/sandboxes/{sandbox['id']}/files/trickled.bin", len(data),
                          Authorization=f"Bearer {KEYS['alice']}")
        for at in range(0, len(data), 64 * KiB):
            await upload.send(data[at:at + 64 * KiB])
            await asyncio.sleep(idle / 2)
        put = await upload.response()
        assert put.status == 201 and put.json()["size"] == len(data), put
        upload.close()
        async with gateway.client() as alice:
            assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/files/trickled.bin")).content == data
            assert len((await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]) == 1
        assert gateway.app.bodies.stalls.total == 1
        await until_held(gateway, 0)


@pytest.mark.parametrize("option, says", [
    ("--max-connections=0", "--max-connections must be at least 1"),
    ("--idle-connection-timeout=0", "--idle-connection-timeout must be more than 0"),
    (f"--max-buffered-body-bytes={CHUNK - 1}", "--max-buffered-body-bytes is"),
    ("--max-buffered-body-bytes=1000000", "--GatewayApp.max_body_size"),
])
def test_bad_limits_are_refused_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                         says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        GatewayApp().initialize([option, "--port=0", f"--data-dir={tmp_path / 'data'}"])
    assert exited.value.code != 0
    assert says in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# -- request bodies ---------------------------------------------------------------------------


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[tuple[InProcessGateway, dict[str, Any]]]:
    """A gateway holding at most ``BUDGET`` bytes of request bodies (its largest body too), and a sandbox."""
    async with InProcessGateway(tmp_path / "data", f"--max-buffered-body-bytes={BUDGET}",
                                f"--GatewayApp.max_body_size={BUDGET}") as gateway:
        async with gateway.client() as alice:
            sandbox = await create(alice)
        sandbox["access_token"] = (await gateway.app.sandboxes.get(sandbox["id"], "alice")).access_token
        yield gateway, sandbox


def held(gateway: InProcessGateway) -> int:
    return gateway.app.bodies.budget.held


async def until_held(gateway: InProcessGateway, size: int) -> None:
    await until(lambda: held(gateway), lambda n: n == size, what=f"{size} bytes of bodies held")


async def start_upload(gateway: InProcessGateway, sandbox: dict[str, Any], path: str, size: int,
                       **headers: str) -> Client:
    """A buffered upload (E2B's envd ``POST /files``: Tornado reads its body whole first): its headers sent."""
    client = await Client.open(gateway)
    await client.head("POST", f"/e2b/sandbox/files?path={path}", size, E2b_Sandbox_Id=sandbox["id"],
                      E2b_Sandbox_Port="49983", X_Access_Token=sandbox["access_token"],
                      Content_Type="application/octet-stream", **headers)
    return client


def assert_busy(answer: Response) -> None:
    assert answer.status == 503, answer
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["code"] == "server_busy"
    assert "--max-buffered-body-bytes" in error["message"] and "1.0 MiB" in error["message"]


async def test_of_two_uploads_past_the_budget_one_is_refused_503_and_the_other_succeeds(
        bounded: tuple[InProcessGateway, dict[str, Any]]) -> None:
    gateway, sandbox = bounded
    size = 600 * KiB
    a_data, b_data = b"a" * size, b"b" * size
    a = await start_upload(gateway, sandbox, "a.bin", size)
    await a.send(a_data[:500 * KiB])
    await until_held(gateway, 500 * KiB)

    # b, sent whole meanwhile, does not fit beside a: read to its end and dropped, then 503, then closed.
    b = await start_upload(gateway, sandbox, "b.bin", size)
    await b.send(b_data)
    assert_busy(await b.response())
    assert await b.closed_by_server() == b""
    b.close()
    assert gateway.app.bodies.refusals.total == 1
    assert held(gateway) == 500 * KiB  # (b's part was given back at once)

    await a.send(a_data[500 * KiB:])
    answer = await a.response()
    assert answer.status == 200, answer
    assert answer.json() == [{"name": "a.bin", "type": "file", "path": "/home/user/a.bin"}]
    await until_held(gateway, 0)  # a's request is over
    a.close()

    async with gateway.client() as alice:
        files = f"/api/v1/sandboxes/{sandbox['id']}/files"
        assert (await alice.get(f"{files}/a.bin")).content == a_data
        assert (await alice.get(f"{files}/b.bin")).json()["error"]["code"] == "file_not_found"
        # The budget is whole again: b, sent again as Retry-After says, fits.
        again = await alice.post("/e2b/sandbox/files", params={"path": "b.bin"}, content=b_data, headers={
            "E2b-Sandbox-Id": sandbox["id"], "E2b-Sandbox-Port": "49983",
            "X-Access-Token": sandbox["access_token"], "Content-Type": "application/octet-stream"})
        assert again.status_code == 200, again.text
        assert (await alice.get(f"{files}/b.bin")).content == b_data
    assert held(gateway) == 0


async def test_a_page_of_an_allowed_origin_can_read_the_503_and_a_foreign_one_cannot(
        bounded: tuple[InProcessGateway, dict[str, Any]]) -> None:
    """The 503 is written before any handler runs: it carries the CORS headers a handler's answer
    would (here the gateway's own origin is allowed, another is not), or a browser shows its page
    a network error instead of ``server_busy`` and its Retry-After."""
    gateway, sandbox = bounded
    a = await start_upload(gateway, sandbox, "a.bin", 600 * KiB)
    await a.send(b"a" * (500 * KiB))
    await until_held(gateway, 500 * KiB)

    answers = {}
    for origin in ("http://127.0.0.1", "http://evil.example"):
        b = await start_upload(gateway, sandbox, "b.bin", 600 * KiB, Origin=origin)
        await b.send(b"b" * (600 * KiB))
        answers[origin] = await b.response()
        b.close()
    own, foreign = answers["http://127.0.0.1"], answers["http://evil.example"]
    assert_busy(own)
    assert own.headers["access-control-allow-origin"] == "http://127.0.0.1"
    assert "Retry-After" in own.headers["access-control-expose-headers"]
    assert own.headers["vary"] == "Origin"
    assert_busy(foreign)
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-expose-headers" not in foreign.headers
    a.close()


async def test_streamed_uploads_hold_one_chunk_at_a_time_and_are_refused_when_nothing_fits(
        bounded: tuple[InProcessGateway, dict[str, Any]]) -> None:
    gateway, sandbox = bounded
    files = f"/api/v1/sandboxes/{sandbox['id']}/files"
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, held(gateway))
            await asyncio.sleep(0)

    # Three times the budget streams through to the sandbox: a chunk is held only while it is passed on.
    data = bytes(range(256)) * (3 * BUDGET // 256)
    watcher = asyncio.ensure_future(watch())
    try:
        async with gateway.client() as alice:
            put = await alice.put(f"{files}/big.bin", content=data)
    finally:
        watcher.cancel()
    assert put.status_code == 201, put.text
    assert put.json()["size"] == len(data)
    assert 0 < most <= CHUNK
    assert held(gateway) == 0

    # Two buffered uploads under way hold the whole budget: not even a chunk of a streamed one fits.
    first = await start_upload(gateway, sandbox, "first.bin", BUDGET)
    await first.send(b"1" * (600 * KiB))
    second = await start_upload(gateway, sandbox, "second.bin", BUDGET)
    await second.send(b"2" * (BUDGET - 600 * KiB))
    await until_held(gateway, BUDGET)
    async with gateway.client() as alice:
        refused = await alice.put(f"{files}/refused.bin", content=b"x" * (200 * KiB))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "server_busy"
        assert held(gateway) == BUDGET

        # A client that goes away gives back what its body held: the other one's rest fits now.
        first.close()
        await until_held(gateway, BUDGET - 600 * KiB)
        await second.send(b"2" * (600 * KiB))
        answer = await second.response()
        assert answer.status == 200, answer
        second.close()
        assert (await alice.get(f"{files}/second.bin")).content == b"2" * BUDGET
        for name in ("refused.bin", "first.bin"):
            assert (await alice.get(f"{files}/{name}")).json()["error"]["code"] == "file_not_found"
    await until_held(gateway, 0)
