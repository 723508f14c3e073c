"""Any replica serves any sandbox: two real gateways sharing a real PostgreSQL, a sandbox held by one of
them, and every kind of request for it sent to the other, which forwards it (REST, NDJSON and SSE
streams, a streamed upload and download, the /stream WebSocket, the Jupyter channels, re-attaching
to a running execution, the E2B sandbox traffic) and hands back exactly what the holder answered."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from jupyter_client.session import Session

from tests.gateways import KEYS, InProcessGateway, create, run
from tests.waiting import hold, until_running

LEASES = "--lease-timeout=5"


@pytest.fixture
async def replicas(tmp_path: Path, postgres_url: str) -> AsyncIterator[tuple[InProcessGateway, InProcessGateway]]:
    """Replica ``a`` (which holds the sandboxes made on it) and replica ``b``, sharing one database."""
    store = f"--store-url={postgres_url}"
    async with InProcessGateway(tmp_path / "a", store, LEASES) as a, InProcessGateway(tmp_path / "b", store, LEASES) as b:
        yield a, b


def holder_of(replica: InProcessGateway, sandbox_id: str) -> bool:
    return replica.app.sandboxes.kernel_of(sandbox_id) is not None


async def test_rest_streams_and_files_for_a_sandbox_held_elsewhere(
        replicas: tuple[InProcessGateway, InProcessGateway]) -> None:
    a, b = replicas
    async with a.client() as on_a, b.client() as on_b, b.client("bob") as bob_on_b:
        sid = (await create(on_a))["id"]
        assert holder_of(a, sid) and not holder_of(b, sid)
        assert (await run(on_b, sid, "x = 41"))["status"] == "completed"  # b forwarded it to a
        assert (await run(on_b, sid, "x + 1"))["result"] == {"text/plain": "42"}
        response = await on_b.get(f"/api/v1/sandboxes/{sid}")
        assert response.status_code == 200 and response.json()["execution_count"] == 2
        assert response.headers["Connection"] == "close"  # (a forwarded answer: the next request reconnects)
        # The holder's answers, errors included, come back as they are.
        refused = await bob_on_b.get(f"/api/v1/sandboxes/{sid}")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "sandbox_not_found"
        bad = await on_b.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": 1})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"

        # NDJSON and SSE, event by event, in order.
        lines = []
        async with on_b.stream("POST", f"/api/v1/sandboxes/{sid}/execute", headers={"Accept": "application/x-ndjson"},
                               json={"code": "for i in range(3): print(i, flush=True)"}) as stream:
            assert stream.status_code == 200 and stream.headers["X-Execution-Id"]
            async for line in stream.aiter_lines():
                if line:
                    lines.append(json.loads(line))
        # (Chunks that came while the client had not been sent the one before are joined to it.)
        assert "".join(e["output"]["text"] for e in lines if e["type"] == "output") == "0\n1\n2\n"
        assert lines[-1]["type"] == "execution" and lines[-1]["execution"]["stdout"] == "0\n1\n2\n"
        async with on_b.stream("POST", f"/api/v1/sandboxes/{sid}/execute", headers={"Accept": "text/event-stream"},
                               json={"code": "print('a')"}) as stream:
            text = (await stream.aread()).decode()
        assert [block.split("\n")[0] for block in text.split("\n\n") if block.strip()] == \
            ["event: output", "event: execution"]

        # A streamed upload (chunked, larger than a socket buffer) and its download, byte for byte.
        payload = os.urandom(3 << 20)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(payload), 1 << 18):
                yield payload[start:start + (1 << 18)]

        uploaded = await on_b.put(f"/api/v1/sandboxes/{sid}/files/data/blob.bin", content=chunks())
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["size"] == len(payload)
        downloaded = await on_b.get(f"/api/v1/sandboxes/{sid}/files/data/blob.bin")
        assert downloaded.status_code == 200 and downloaded.content == payload
        listing = (await on_b.get(f"/api/v1/sandboxes/{sid}/files", params={"path": "data"})).json()
        assert [entry["name"] for entry in listing["entries"]] == ["blob.bin"]
        assert (await run(on_a, sid, "print(len(open('data/blob.bin', 'rb').read()))"))["stdout"] == f"{len(payload)}\n"

        # History and notebook from the other replica.
        history = (await on_b.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
        assert [e["code"] for e in history[:2]] == ["x = 41", "x + 1"]
        notebook = await on_b.get(f"/api/v1/sandboxes/{sid}/notebook")
        assert notebook.status_code == 200 and len(notebook.json()["cells"]) == len(history)

        # An execution running on a: followed, interrupted and fetched through b.
        busy = await until_running(on_a, sid, hold())
        running = (await on_b.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"][-1]
        assert running["status"] == "running"
        fetched = await on_b.get(f"/api/v1/executions/{running['id']}")
        assert fetched.json()["status"] == "running"  # (a's live record, not the stored "queued")
        async with on_b.stream("GET", f"/api/v1/executions/{running['id']}/events",
                               headers={"Accept": "application/x-ndjson"}) as follow:
            lines_of = follow.aiter_lines()
            first = json.loads(await lines_of.__anext__())
            assert first["type"] == "output" and first["output"]["text"] == "started\n"
            assert (await on_b.post(f"/api/v1/sandboxes/{sid}/interrupt")).status_code == 200
            rest = [json.loads(line) async for line in lines_of if line]
        assert rest[-1]["type"] == "execution" and rest[-1]["execution"]["status"] == "cancelled"
        assert (await busy)["status"] == "cancelled"

        # Deleting through b ends it where it runs.
        assert (await on_b.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
        assert not holder_of(a, sid)
        assert (await on_a.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "terminated"


async def test_websockets_for_a_sandbox_held_elsewhere(replicas: tuple[InProcessGateway, InProcessGateway]) -> None:
    a, b = replicas
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    async with a.client() as on_a, b.client() as on_b:
        sid = (await create(on_a))["id"]
        # /stream through b: several executes, in order, each with its events.
        async with websockets.connect(b.url.replace("http", "ws") + f"/api/v1/sandboxes/{sid}/stream",
                                      additional_headers=headers) as socket:
            for n in range(3):
                await socket.send(json.dumps({"type": "execute", "id": f"c{n}", "code": f"print({n}); {n} * 2"}))
            finals = []
            async with asyncio.timeout(60):
                while len(finals) < 3:
                    event = json.loads(await socket.recv())
                    if event["type"] == "execution":
                        finals.append(event)
            assert [(e["id"], e["execution"]["stdout"], e["execution"]["result"]) for e in finals] == \
                [(f"c{n}", f"{n}\n", {"text/plain": str(n * 2)}) for n in range(3)]
        # A foreign origin is refused by the holder, through b.
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(b.url.replace("http", "ws") + f"/api/v1/sandboxes/{sid}/stream",
                                     additional_headers={**headers, "Origin": "http://evil.example"})
        assert refused.value.response.status_code == 403

        # The Jupyter channels through b, with jupyter_client's message format and the v1 subprotocol too.
        for subprotocols in (None, ["v1.kernel.websocket.jupyter.org"]):
            url = b.url.replace("http", "ws") + f"/api/kernels/{sid}/channels?session_id={uuid.uuid4()}"
            async with websockets.connect(url, additional_headers=headers, subprotocols=subprotocols,  # type: ignore[arg-type]
                                          max_size=None) as socket:
                assert socket.subprotocol == (subprotocols[0] if subprotocols else None)
                if subprotocols:
                    continue  # (v1 frames are binary: the handshake is what is checked here)
                message = Session().msg("execute_request", content={
                    "code": "x = 6 * 7; x", "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False})
                message["channel"] = "shell"
                message["header"]["date"] = message["header"]["date"].isoformat()
                await socket.send(json.dumps(message))
                async with asyncio.timeout(60):
                    while True:
                        reply = json.loads(await socket.recv())
                        if reply["msg_type"] == "execute_result":
                            assert reply["content"]["data"]["text/plain"] == "42"
                            break
        assert (await run(on_b, sid, "x"))["result"] == {"text/plain": "42"}


async def test_the_e2b_sandbox_traffic_for_a_sandbox_held_elsewhere(
        replicas: tuple[InProcessGateway, InProcessGateway]) -> None:
    a, b = replicas
    async with a.client() as on_a, httpx.AsyncClient(base_url=b.url, timeout=60) as raw:
        sid = (await create(on_a))["id"]
        token = a.app.sandboxes._sandboxes[sid].access_token
        headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49999", "X-Access-Token": token}
        answer = await raw.post("/e2b/sandbox/execute", json={"code": "1 + 1"}, headers=headers)
        assert answer.status_code == 200, answer.text
        assert '"text": "2"' in answer.text or '"text":"2"' in answer.text
        wrong = await raw.post("/e2b/sandbox/execute", json={"code": "1"}, headers={**headers, "X-Access-Token": "x"})
        assert wrong.status_code == 401  # the holder checked the token
