"""Sandbox lifecycle over real HTTP against a real kernel: create, show, list, delete, restart, ownership."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateways import run


async def test_create_returns_a_running_sandbox_with_its_limits(alice: httpx.AsyncClient) -> None:
    response = await alice.post(
        "/api/v1/sandboxes",
        json={"resources": {"cpu": 0.5, "memory_mb": 256, "disk_mb": 64}, "timeout": 12, "metadata": {"chat": "c1"}},
    )
    assert response.status_code == 201, response.text
    sandbox = response.json()
    assert sandbox["status"] == "running"
    assert sandbox["owner"] == "alice"
    assert sandbox["resources"]["cpu"] == 0.5
    assert sandbox["resources"]["memory_mb"] == 256
    assert sandbox["resources"]["disk_mb"] == 64
    assert sandbox["resources"]["timeout"] == 12
    assert sandbox["resources"]["network"] is False
    assert sandbox["metadata"] == {"chat": "c1"}
    assert sandbox["created_at"].endswith("Z") and sandbox["last_active_at"].endswith("Z")
    assert response.headers["Location"] == f"/api/v1/sandboxes/{sandbox['id']}"
    assert "kernel" not in sandbox  # connection secrets never leave the gateway


async def test_empty_body_uses_defaults(alice: httpx.AsyncClient) -> None:
    response = await alice.post("/api/v1/sandboxes")
    assert response.status_code == 201, response.text
    assert response.json()["resources"]["timeout"] == 30


async def test_env_is_visible_to_code(alice: httpx.AsyncClient) -> None:
    created = (await alice.post("/api/v1/sandboxes", json={"env": {"GREETING": "hello"}})).json()
    execution = await run(alice, created["id"], "import os; os.environ['GREETING']")
    assert execution["result"]["text/plain"] == "'hello'"


async def test_gateway_environment_is_not_visible_to_code(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    execution = await run(alice, sandbox["id"], "import os; sorted(k for k in os.environ if 'GATEWAY' in k or 'KEY' in k)")
    assert execution["result"]["text/plain"] == "[]"


async def test_get_and_list_show_only_own_sandboxes(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    shown = await alice.get(f"/api/v1/sandboxes/{sandbox['id']}")
    assert shown.status_code == 200 and shown.json()["id"] == sandbox["id"]
    listed = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
    assert [s["id"] for s in listed] == [sandbox["id"]]
    assert (await bob.get("/api/v1/sandboxes")).json()["sandboxes"] == []


async def test_list_by_status(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    running, deleted = (await alice.post("/api/v1/sandboxes")).json(), (await alice.post("/api/v1/sandboxes")).json()
    assert (await alice.delete(f"/api/v1/sandboxes/{deleted['id']}")).status_code == 204

    async def listed(query: str, client: httpx.AsyncClient = alice) -> list[str]:
        response = await client.get(f"/api/v1/sandboxes{query}")
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json()["sandboxes"]]

    assert await listed("") == [running["id"], deleted["id"]]
    assert await listed("?status=running") == [running["id"]]
    assert await listed("?status=terminated") == [deleted["id"]]
    assert await listed("?status=running&status=terminated") == [running["id"], deleted["id"]]
    assert await listed("?status=failed") == []
    assert await listed("?status=running", client=bob) == []  # the filter never widens what one sees
    refused = await alice.get("/api/v1/sandboxes?status=running&status=bogus")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"
    assert "'bogus'" in refused.json()["error"]["message"] and "terminated" in refused.json()["error"]["message"]


async def test_someone_elses_sandbox_is_not_found(bob: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    for response in (
        await bob.get(f"/api/v1/sandboxes/{sid}"),
        await bob.delete(f"/api/v1/sandboxes/{sid}"),
        await bob.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"}),
        await bob.post(f"/api/v1/sandboxes/{sid}/interrupt"),
        await bob.post(f"/api/v1/sandboxes/{sid}/restart"),
        await bob.get(f"/api/v1/sandboxes/{sid}/executions"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "sandbox_not_found"


async def test_unknown_sandbox_is_not_found_the_same_way(bob: httpx.AsyncClient) -> None:
    response = await bob.get("/api/v1/sandboxes/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "sandbox_not_found"


async def test_admin_sees_everyones_sandboxes(gateway: Any, sandbox: dict[str, Any]) -> None:
    async with gateway.client("admin") as admin:
        listed = (await admin.get("/api/v1/sandboxes")).json()["sandboxes"]
        assert sandbox["id"] in [s["id"] for s in listed]
        assert (await admin.get(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 200


async def test_delete_stops_the_kernel_and_keeps_the_record(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    response = await alice.delete(f"/api/v1/sandboxes/{sid}")
    assert response.status_code == 204 and response.content == b""
    record = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert record["status"] == "terminated"
    assert record["status_reason"] == "deleted"
    assert record["terminated_at"] is not None
    refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "sandbox_not_running"
    # Deleting again is harmless.
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204


async def test_restart_clears_state_and_keeps_the_id(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    await run(alice, sid, "x = 1")
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/restart")
    assert restarted.status_code == 200 and restarted.json()["id"] == sid
    assert restarted.json()["status"] == "running"
    after = await run(alice, sid, "x")
    assert after["status"] == "failed"
    assert after["error"]["ename"] == "NameError"


async def test_quota_limits_live_sandboxes_per_user(tmp_path: Any) -> None:
    from tests.gateways import InProcessGateway

    async with InProcessGateway(tmp_path / "data", "--max-sandboxes-per-user=1") as gw, gw.client() as alice:
        first = await alice.post("/api/v1/sandboxes")
        assert first.status_code == 201
        second = await alice.post("/api/v1/sandboxes")
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "quota_exceeded"
        await alice.delete(f"/api/v1/sandboxes/{first.json()['id']}")
        assert (await alice.post("/api/v1/sandboxes")).status_code == 201
