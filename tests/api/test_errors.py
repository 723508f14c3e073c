"""Bad input gets a clear JSON error with the right status, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from tests.gateways import KEYS, InProcessGateway


def assert_error(response: httpx.Response, status: int, code: str, mentions: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if mentions:
        assert mentions in error["message"]
    assert "Traceback" not in response.text


async def no_sandboxes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/sandboxes")).json()["sandboxes"] == []


@pytest.mark.parametrize(
    "body, status, code, mentions",
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json", "nested more than 128 levels deep"),
        (b'{"cpu": 1}', 400, "invalid_request", "cpu"),
        (b'{"resources": {"cpu": "two"}}', 400, "invalid_request", "resources.cpu"),
        (b'{"resources": {"gpus": 1}}', 400, "invalid_request", "resources.gpus"),
        (b'{"env": {"A": 1}}', 400, "invalid_request", "env.A"),
        (b'{"env": {"1BAD": "x"}}', 400, "invalid_request", "env"),
        (b'{"timeout": "soon"}', 400, "invalid_request", "timeout"),
        (b'{"resources": {"cpu": 0}}', 422, "limit_out_of_range", "resources.cpu"),
        (b'{"resources": {"cpu": 16.5}}', 422, "limit_out_of_range", "resources.cpu"),
        (b'{"resources": {"cpu": -1}}', 422, "limit_out_of_range", "resources.cpu"),
        (b'{"resources": {"memory_mb": 0}}', 422, "limit_out_of_range", "resources.memory_mb"),
        (b'{"resources": {"memory_mb": 32769}}', 422, "limit_out_of_range", "resources.memory_mb"),
        (b'{"timeout": 0}', 422, "limit_out_of_range", "timeout"),
        (b'{"network": true}', 403, "network_not_allowed", None),
    ],
)
async def test_bad_create_requests(alice: httpx.AsyncClient, body: bytes, status: int, code: str,
                                   mentions: str | None) -> None:
    response = await alice.post("/api/v1/sandboxes", content=body)
    assert_error(response, status, code, mentions)
    await no_sandboxes(alice)


async def test_limits_at_the_bounds_are_accepted(alice: httpx.AsyncClient) -> None:
    response = await alice.post("/api/v1/sandboxes", json={"resources": {"cpu": 16, "memory_mb": 32768}})
    assert response.status_code == 201, response.text


#: What a client might send in the wrong place: a secret, and a lot of it.
SECRET = "sk-live-" + "s3cr3t" * 50_000


async def test_a_refused_value_is_never_quoted_back(gateway: InProcessGateway, alice: httpx.AsyncClient,
                                                    sandbox: dict[str, Any]) -> None:
    """jsonschema's messages start with the value they refuse; ours name the field and the rule only,
    on every way in, so a secret sent in the wrong field never comes back (nor a megabyte of it)."""
    sid = sandbox["id"]
    refused = [
        ("POST", "/api/v1/sandboxes", {"env": SECRET}, "field 'env': is not of type 'object'"),
        ("POST", "/api/v1/sandboxes", {"metadata": {"k": 1}, "lifetime": SECRET}, "field 'lifetime': is not of type 'number'"),
        ("POST", "/api/v1/sandboxes", {"isolation": SECRET}, "field 'isolation': is not one of 'runc', 'gvisor'"),
        ("PATCH", f"/api/v1/sandboxes/{sid}", {"metadata": SECRET}, "field 'metadata': is not of type 'object'"),
        ("POST", f"/api/v1/sandboxes/{sid}/execute", {"code": "1", "timeout": SECRET}, "field 'timeout': is not of type 'number'"),
        ("POST", f"/api/v1/sandboxes/{sid}/contexts", {"cwd": SECRET + "\0"}, "field 'cwd': does not match the pattern"),
    ]
    for method, path, body, says in refused:
        response = await alice.request(method, path, json=body)
        assert_error(response, 400, "invalid_request", says)
        assert "s3cr3t" not in response.text and len(response.content) < 1000, response.text[:300]
    # A bad name is said (names are not values), clipped.
    response = await alice.post("/api/v1/sandboxes", json={"env": {"BAD NAME": "x"}})
    assert_error(response, 400, "invalid_request", "field 'env': the name 'BAD NAME' does not match the pattern")
    async with websockets.connect(gateway.url.replace("http", "ws") + f"/api/v1/sandboxes/{sid}/stream",
                                  additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as socket:
        await socket.send(json.dumps({"type": "execute", "id": "t", "code": "1", "timeout": SECRET}))
        answer = await asyncio.wait_for(socket.recv(), 30)
    assert "s3cr3t" not in answer and "field 'timeout': is not of type 'number'" in answer, answer[:300]
    e2b = await alice.post("/e2b/sandboxes", json={"templateID": "base", "envVars": SECRET},
                           headers={"X-API-Key": await gateway.app.keyring.create("alice", "e2b")})
    assert e2b.status_code == 400 and "field 'envVars'" in e2b.text and "s3cr3t" not in e2b.text, e2b.text[:300]
    await no_sandboxes_but(alice, sid)


async def no_sandboxes_but(client: httpx.AsyncClient, sandbox_id: str) -> None:
    listed = (await client.get("/api/v1/sandboxes")).json()["sandboxes"]
    assert [(s["id"], s["metadata"]) for s in listed] == [(sandbox_id, {})]
    assert (await client.get(f"/api/v1/sandboxes/{sandbox_id}/executions")).json()["executions"] == []


@pytest.mark.parametrize(
    "body, status, code, mentions",
    [
        (b"not json", 400, "invalid_json", None),
        (b"{}", 400, "invalid_request", "code"),
        (b'{"code": 5}', 400, "invalid_request", "code"),
        (b'{"code": "1", "extra": true}', 400, "invalid_request", "extra"),
        (b'{"code": "1", "timeout": "x"}', 400, "invalid_request", "timeout"),
        (b'{"code": "1", "timeout": -1}', 422, "limit_out_of_range", "timeout"),
    ],
)
async def test_bad_execute_requests(alice: httpx.AsyncClient, sandbox: dict[str, Any], body: bytes, status: int,
                                    code: str, mentions: str | None) -> None:
    response = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", content=body)
    assert_error(response, status, code, mentions)
    assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"] == []


async def test_code_over_one_mebibyte_is_too_large(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    code = "#" * ((1 << 20) + 1)
    response = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": code})
    assert_error(response, 413, "payload_too_large", "code")
    assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"] == []
    # Exactly 1 MiB is fine.
    ok = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": "#" * (1 << 20)})
    assert ok.status_code == 200


async def test_unknown_routes_and_methods_are_json(alice: httpx.AsyncClient) -> None:
    assert_error(await alice.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(await alice.get("/favicon.ico"), 404, "not_found")
    assert_error(await alice.put("/api/v1/sandboxes"), 405, "method_not_allowed")


async def test_unknown_execution_is_not_found(alice: httpx.AsyncClient) -> None:
    assert_error(await alice.get("/api/v1/executions/0000"), 404, "execution_not_found")


async def test_bad_paging_is_rejected(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    response = await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions?limit=abc")
    assert_error(response, 400, "invalid_request", "limit")


#: 100,000 nested arrays: past every JSON parser's recursion (protobuf-py's crashed the interpreter).
TOO_DEEP = b"[" * 100_000
#: An object 129 levels deep (``jsonbytes.MAX_DEPTH`` is 128): valid JSON, refused as well.
DEEPER_THAN_TAKEN = b'{"metadata": {"a": ' + b"[" * 127 + b"]" * 127 + b"}}"


async def test_json_nested_too_deep_is_invalid_json_on_every_endpoint(gateway: InProcessGateway, alice: httpx.AsyncClient,
                                                                      sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    ours = [("POST", "/api/v1/sandboxes"), ("PATCH", f"/api/v1/sandboxes/{sid}"),
            ("POST", f"/api/v1/sandboxes/{sid}/execute"), ("POST", f"/api/v1/sandboxes/{sid}/contexts"),
            ("POST", "/api/kernels")]
    for method, path in ours:
        for body in (TOO_DEEP, DEEPER_THAN_TAKEN):
            response = await alice.request(method, path, content=body)
            assert_error(response, 400, "invalid_json", "nested more than 128 levels deep")
    e2b_key = {"X-API-Key": await gateway.app.keyring.create("alice", "e2b")}
    for path in ("/e2b/sandboxes", f"/e2b/sandboxes/{sid}/timeout", f"/e2b/sandboxes/{sid}/connect"):
        response = await alice.post(path, content=TOO_DEEP, headers=e2b_key)
        assert response.status_code == 400 and "nested more than 128 levels deep" in response.json()["message"]
    traffic = {"E2b-Sandbox-Id": sid, "X-Access-Token": gateway.app.sandboxes._sandboxes[sid].access_token}
    for path in ("/e2b/sandbox/execute", "/e2b/sandbox/contexts"):
        response = await alice.post(path, content=TOO_DEEP, headers={**traffic, "E2b-Sandbox-Port": "49999"})
        assert response.status_code == 400 and "nested more than 128 levels deep" in response.text
    envd = {**traffic, "E2b-Sandbox-Port": "49983"}
    unary = await alice.post("/e2b/sandbox/filesystem.Filesystem/ListDir", content=TOO_DEEP,
                             headers={**envd, "Content-Type": "application/json"})
    assert unary.status_code == 400 and unary.json()["code"] == "invalid_argument", unary.text
    streamed = await alice.post("/e2b/sandbox/process.Process/Start", content=b"\0" + (len(TOO_DEEP)).to_bytes(4, "big")
                                + TOO_DEEP, headers={**envd, "Content-Type": "application/connect+json"})
    assert b'"invalid_argument"' in streamed.content and b"nested more than 128 levels deep" in streamed.content
    mcp = await alice.post("/mcp", content=TOO_DEEP, headers={"Accept": "application/json, text/event-stream",
                                                               "Content-Type": "application/json"})
    assert mcp.status_code == 400 and mcp.json()["error"]["code"] == -32700  # (the MCP SDK's parse error)
    # Nothing was made or changed, and the gateway is still there to say so.
    listed = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
    assert [(s["id"], s["metadata"]) for s in listed] == [(sid, {})]
    assert (await alice.get(f"/api/v1/sandboxes/{sid}/contexts")).json()["contexts"][1:] == []
    assert (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"] == []


async def test_json_as_deep_as_taken_is_taken(alice: httpx.AsyncClient) -> None:
    metadata = b'{"a": ' + b"[" * 126 + b"]" * 126 + b"}"  # with the body's own object, 128 levels
    response = await alice.post("/api/v1/sandboxes", content=b'{"metadata": ' + metadata + b"}")
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == json.loads(metadata)
