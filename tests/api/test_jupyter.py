"""The Jupyter Server kernel API over real HTTP and WebSockets, with real Jupyter clients."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from tests.api.test_errors import assert_error
from tests.gateways import KEYS, InProcessGateway

TOKEN = {"Authorization": f"token {KEYS['alice']}"}


@pytest.fixture
async def kernel(gateway: InProcessGateway) -> dict[str, Any]:
    async with gateway.client(None) as client:
        response = await client.post("/api/kernels", json={"name": "python3"}, headers=TOKEN)
        assert response.status_code == 201, response.text
        return response.json()


def execute_request(code: str) -> dict[str, Any]:
    msg = Session().msg("execute_request", content={"code": code, "silent": False, "store_history": True,
                                                    "user_expressions": {}, "allow_stdin": False})
    msg["channel"] = "shell"
    msg["header"]["date"] = msg["header"]["date"].isoformat()
    return msg


async def replies_to(socket: Any, msg_id: str, decode: Any = json.loads) -> list[dict[str, Any]]:
    """Messages with parent ``msg_id`` until both the execute_reply and the idle status arrived."""
    got, reply, idle = [], False, False
    while not (reply and idle):
        msg = decode(await asyncio.wait_for(socket.recv(), 60))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        reply = reply or msg["msg_type"] == "execute_reply"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return got


def channels_url(gateway: InProcessGateway, kernel_id: str) -> str:
    return gateway.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"


async def test_api_and_kernelspecs(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        assert "version" in (await client.get("/api")).json()
        specs = (await client.get("/api/kernelspecs", headers=TOKEN)).json()
        assert specs["default"] == "python3"
        spec = specs["kernelspecs"]["python3"]
        assert spec["name"] == "python3" and spec["spec"]["language"] == "python" and spec["resources"] == {}
        assert (await client.get("/api/kernelspecs/python3", headers=TOKEN)).json() == spec
        assert_error(await client.get("/api/kernelspecs/julia", headers=TOKEN), 404, "not_found")
        assert_error(await client.get("/api/kernelspecs"), 401, "unauthorized")


async def test_kernel_lifecycle(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    kid = kernel["id"]
    assert kernel["name"] == "python3" and kernel["execution_state"] == "idle" and kernel["connections"] == 0
    assert kernel["last_activity"].endswith("Z") and "." in kernel["last_activity"]
    async with gateway.client(None) as client:
        assert [k["id"] for k in (await client.get("/api/kernels", headers=TOKEN)).json()] == [kid]
        assert (await client.get(f"/api/kernels/{kid}", headers=TOKEN)).json()["id"] == kid
        # The kernel is a sandbox of the same owner, usable through our own API too.
        sandbox = (await client.get(f"/api/v1/sandboxes/{kid}", headers=TOKEN)).json()
        assert sandbox["owner"] == "alice" and sandbox["metadata"] == {"started_by": "jupyter"}
        assert (await client.post(f"/api/kernels/{kid}/interrupt", json={}, headers=TOKEN)).status_code == 204
        restarted = await client.post(f"/api/kernels/{kid}/restart", json={}, headers=TOKEN)
        assert restarted.status_code == 200 and restarted.json()["id"] == kid
        assert (await client.delete(f"/api/kernels/{kid}", headers=TOKEN)).status_code == 204
        assert_error(await client.get(f"/api/kernels/{kid}", headers=TOKEN), 404, "sandbox_not_found")
        assert (await client.get("/api/kernels", headers=TOKEN)).json() == []


async def test_kernel_env_from_the_client(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        kernel = (await client.post("/api/kernels", headers=TOKEN, json={
            "name": "python3", "env": {"KERNEL_USERNAME": "al", "KERNEL_WORKING_DIR": "/home/somewhere"}})).json()
        response = await client.post(f"/api/v1/sandboxes/{kernel['id']}/execute", headers=TOKEN, json={
            "code": "import os; (os.environ.get('KERNEL_USERNAME'), 'KERNEL_WORKING_DIR' in os.environ)"})
        assert response.json()["result"]["text/plain"] == "('al', False)"


async def test_bad_kernel_requests(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with gateway.client(None) as client:
        assert_error(await client.post("/api/kernels", json={"name": "julia"}, headers=TOKEN), 404, "not_found")
        assert_error(await client.post("/api/kernels", content=b"{", headers=TOKEN), 400, "invalid_json")
        assert_error(await client.post("/api/kernels", json={"env": {"A": 1}}, headers=TOKEN), 400, "invalid_request")
        assert_error(await client.post("/api/kernels", json={}), 401, "unauthorized")
        bob = {"Authorization": f"token {KEYS['bob']}"}
        assert_error(await client.get(f"/api/kernels/{kernel['id']}", headers=bob), 404, "sandbox_not_found")
        assert_error(await client.delete(f"/api/kernels/{kernel['id']}", headers=bob), 404, "sandbox_not_found")
        assert (await client.get("/api/kernels", headers=bob)).json() == []


async def test_channels_default_json_protocol(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        assert socket.subprotocol is None
        request = execute_request("x = 41\nprint('hello')\nx + 1")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    streams = [m["content"]["text"] for m in got if m["msg_type"] == "stream"]
    results = [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"]
    reply = next(m for m in got if m["msg_type"] == "execute_reply")
    assert streams == ["hello\n"] and results == ["42"]
    assert reply["content"]["status"] == "ok" and reply["channel"] == "shell"


async def test_channels_v1_protocol(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN,
                                  subprotocols=["v1.kernel.websocket.jupyter.org"]) as socket:
        assert socket.subprotocol == "v1.kernel.websocket.jupyter.org"
        request = execute_request("6 * 7")
        session = Session(key=b"")  # v1 frames carry no signature for the client to check
        parts = [json.dumps(request[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
        await socket.send(serialize_msg_to_ws_v1(parts, "shell"))

        def decode(frame: bytes) -> dict[str, Any]:
            channel, msg_list = deserialize_msg_from_ws_v1(frame)
            msg = session.deserialize([b"", *msg_list], content=True)
            msg["channel"] = channel
            return msg

        got = await replies_to(socket, request["header"]["msg_id"], decode)
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]


async def test_large_output_is_not_rate_limited(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN,
                                  max_size=None) as socket:
        request = execute_request("print('y' * 3_000_000)")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    text = "".join(m["content"]["text"] for m in got if m["msg_type"] == "stream")
    assert text == "y" * 3_000_000 + "\n"


async def test_channels_refuse_strangers(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    with pytest.raises(websockets.InvalidStatus) as anonymous:
        async with websockets.connect(channels_url(gateway, kernel["id"])):
            pass
    assert anonymous.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as bob:
        async with websockets.connect(channels_url(gateway, kernel["id"]),
                                      additional_headers={"Authorization": f"token {KEYS['bob']}"}):
            pass
    assert bob.value.response.status_code == 404
    assert json.loads(bob.value.response.body)["error"]["code"] == "sandbox_not_found"


async def statuses_until(socket: Any, wanted: str, within: float = 10) -> list[str]:
    """The iopub execution states received until ``wanted`` (the test fails after ``within`` seconds)."""
    seen: list[str] = []
    async with asyncio.timeout(within):
        while wanted not in seen:
            msg = json.loads(await socket.recv())
            if msg["msg_type"] == "status":
                seen.append(msg["content"]["execution_state"])
    return seen


async def test_a_dying_jupyter_kernel_says_restarting_and_comes_back(gateway: InProcessGateway,
                                                                     kernel: dict[str, Any]) -> None:
    """As Jupyter Server does for its kernels: ``status: restarting`` on iopub at once, then a fresh kernel."""
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        await socket.send(json.dumps(execute_request("x = 1\nimport os\nos._exit(1)")))
        assert "restarting" in await statuses_until(socket, "restarting")
        # The same socket reaches the new kernel (its sockets are the old ones' addresses); state is gone.
        async with asyncio.timeout(60):
            while True:
                request = execute_request("'x' in globals()")
                await socket.send(json.dumps(request))
                got = await replies_to(socket, request["header"]["msg_id"])
                results = [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"]
                if results:
                    break
        assert results == ["False"]
    async with gateway.client(None) as client:
        model = (await client.get(f"/api/kernels/{kernel['id']}", headers=TOKEN)).json()
        assert model["execution_state"] == "idle"
        sandbox = (await client.get(f"/api/v1/sandboxes/{kernel['id']}", headers=TOKEN)).json()
        assert sandbox["status"] == "running" and sandbox["status_reason"] is None


async def test_a_dying_sandbox_kernel_says_dead(gateway: InProcessGateway, sandbox: dict[str, Any]) -> None:
    """A sandbox of our own API stays failed (its owner restarts it), and Jupyter clients are told at once."""
    async with websockets.connect(channels_url(gateway, sandbox["id"]), additional_headers=TOKEN) as socket:
        await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
        assert "restarting" not in await statuses_until(socket, "dead")
    async with gateway.client(None) as client:
        assert (await client.get(f"/api/kernels/{sandbox['id']}", headers=TOKEN)).json()["execution_state"] == "dead"
        failed = (await client.get(f"/api/v1/sandboxes/{sandbox['id']}", headers=TOKEN)).json()
        assert failed["status"] == "failed" and failed["status_reason"] == "kernel_died"
