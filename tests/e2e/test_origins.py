"""Browser origins, as an attack: a page of a foreign site holding a leaked key gets no WebSocket
(neither ``/stream`` nor the Jupyter channels) and no CORS grant; allowed origins get both.

Against a real gateway with Docker sandboxes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.api.test_errors import assert_error
from tests.api.test_jupyter import execute_request, replies_to
from tests.conftest import docker_or_fail
from tests.gateways import KEYS, InProcessGateway, create

pytestmark = pytest.mark.docker

ALLOWED = "https://app.example"
#: Foreign origins, including ones a prefix or pattern match would let through.
FOREIGN = ["http://evil.example", "https://app.example.evil", "https://evil.app.example", "http://app.example",
           "null"]


@pytest.fixture
async def gateway(tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    docker_or_fail().close()
    async with InProcessGateway(tmp_path / "data", f"--allow-origins={ALLOWED}", provisioner="docker") as running:
        yield running


@pytest.fixture
async def alice(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("alice") as client:
        yield client


def stream_url(gateway: InProcessGateway, sandbox_id: str) -> str:
    return gateway.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox_id}/stream?token={KEYS['alice']}"


def channels_url(gateway: InProcessGateway, kernel_id: str) -> str:
    return (gateway.url.replace("http", "ws")
            + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}&token={KEYS['alice']}")


async def refused(url: str, origin: str) -> dict[str, Any]:
    with pytest.raises(websockets.InvalidStatus) as refusal:
        async with websockets.connect(url, origin=origin):  # type: ignore[arg-type]
            pass
    assert refusal.value.response.status_code == 403
    error: dict[str, Any] = json.loads(refusal.value.response.body)["error"]
    return error


async def test_stream_socket_refuses_foreign_origins(gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    for origin in FOREIGN:
        error = await refused(stream_url(gateway, sandbox["id"]), origin)
        assert error["code"] == "origin_not_allowed" and origin in error["message"]
    for origin in (ALLOWED, gateway.url):
        url = stream_url(gateway, sandbox["id"])
        async with websockets.connect(url, origin=origin) as socket:  # type: ignore[arg-type]
            await socket.send(json.dumps({"type": "execute", "id": "o", "code": "6 * 7"}))
            while (event := json.loads(await socket.recv()))["type"] != "execution":
                pass
        assert event["execution"]["result"] == {"text/plain": "42"}
    # Nothing ran for the foreign pages.
    history = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]
    assert len(history) == 2


async def test_jupyter_channels_refuse_foreign_origins_even_with_a_token(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    kernel = (await alice.post("/api/kernels", json={})).json()
    for origin in FOREIGN:
        error = await refused(channels_url(gateway, kernel["id"]), origin)
        assert error["code"] == "origin_not_allowed"
    url = channels_url(gateway, kernel["id"])
    async with websockets.connect(url, origin=ALLOWED) as socket:  # type: ignore[arg-type]
        request = execute_request("6 * 7")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]


async def test_rest_preflights_are_granted_to_allowed_origins_only(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        preflight = {"Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        granted = await anonymous.options("/api/v1/sandboxes", headers={"Origin": ALLOWED, **preflight})
        assert granted.status_code == 204, granted.text
        assert granted.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "POST" in granted.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in granted.headers["Access-Control-Allow-Headers"]
        assert "Origin" in granted.headers["Vary"]
        for origin in FOREIGN:
            denied = await anonymous.options("/api/v1/sandboxes", headers={"Origin": origin, **preflight})
            assert_error(denied, 403, "origin_not_allowed")
            assert "Access-Control-Allow-Origin" not in denied.headers
    async with gateway.client("alice") as alice:
        allowed = await alice.get("/api/v1/sandboxes", headers={"Origin": ALLOWED})
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "X-Execution-Id" in allowed.headers["Access-Control-Expose-Headers"]
        # Errors carry the grant too, so the page can read why.
        missing = await alice.get("/api/v1/sandboxes/0000", headers={"Origin": ALLOWED})
        assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == ALLOWED
        foreign = await alice.get("/api/v1/sandboxes", headers={"Origin": FOREIGN[0]})
        assert "Access-Control-Allow-Origin" not in foreign.headers


async def test_websocket_routes_without_an_upgrade_are_json_400(gateway: InProcessGateway,
                                                                 alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    assert_error(await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/stream"), 400, "invalid_request", "upgrade")
    assert_error(await alice.get(f"/api/kernels/{sandbox['id']}/channels"), 400, "invalid_request", "upgrade")
