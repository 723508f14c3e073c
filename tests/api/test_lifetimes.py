"""Lifetimes and idle timeouts over real HTTP: expiry (also mid-execution), PATCH extension, idle terminate."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
import websockets

from tests.gateways import InProcessGateway, auth, create, run
from tests.provisioned import PROVISIONERS, gateway_for
from tests.waiting import executions_of, until


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def until_ended(client: httpx.AsyncClient, sandbox_id: str, reason: str) -> dict[str, Any]:
    """The sandbox once it is terminated for ``reason``."""

    async def fetch() -> dict[str, Any]:
        return (await client.get(f"/api/v1/sandboxes/{sandbox_id}")).json()

    return await until(fetch, lambda s: s["status"] == "terminated" and s["status_reason"] == reason,
                       what=f"sandbox {sandbox_id} to end ({reason})")


async def test_the_record_shows_lifetime_and_idle_rules(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice, lifetime=120, idle_timeout=30, on_idle="terminate", auto_resume=False)
    lifetime = (moment(sandbox["expires_at"]) - moment(sandbox["created_at"])).total_seconds()
    assert 119 <= lifetime <= 121
    assert (sandbox["idle_timeout"], sandbox["on_idle"], sandbox["auto_resume"]) == (30, "terminate", False)
    defaults = await create(alice)
    assert 3599 <= (moment(defaults["expires_at"]) - moment(defaults["created_at"])).total_seconds() <= 3601
    assert (defaults["idle_timeout"], defaults["on_idle"], defaults["auto_resume"]) == (600, "pause", True)


@pytest.mark.parametrize("body, field", [
    ({"lifetime": 0}, "lifetime"), ({"lifetime": -5}, "lifetime"), ({"lifetime": 86401}, "lifetime"),
    ({"idle_timeout": 0}, "idle_timeout"), ({"idle_timeout": 10 ** 9}, "idle_timeout"),
])
async def test_out_of_range_values_are_422_naming_the_field(
    alice: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await alice.post("/api/v1/sandboxes", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "limit_out_of_range"
    assert field in response.json()["error"]["message"]
    assert (await alice.get("/api/v1/sandboxes")).json()["sandboxes"] == []  # nothing was started


async def test_wrong_types_are_400(alice: httpx.AsyncClient) -> None:
    for body in ({"on_idle": "sleep"}, {"auto_resume": "yes"}, {"lifetime": "long"}):
        response = await alice.post("/api/v1/sandboxes", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert next(iter(body)) in response.json()["error"]["message"]


async def stream_lines(client: httpx.AsyncClient, sandbox_id: str, code: str) -> list[dict[str, Any]]:
    async with client.stream("POST", f"/api/v1/sandboxes/{sandbox_id}/execute", json={"code": code, "timeout": 120},
                             headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200
        return [json.loads(line) async for line in response.aiter_lines() if line.strip()]


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_expiry_ends_the_sandbox_and_cancels_its_running_execution(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice, lifetime=600))["id"]
        # A client streaming at that moment gets the final event saying why the execution ended.
        streaming = asyncio.create_task(stream_lines(alice, sid, "import time\nprint('started', flush=True)\n"
                                                                "time.sleep(120)"))
        await until(lambda: executions_of(alice, sid), lambda e: bool(e) and "started" in e[-1]["stdout"],
                    what="the execution to run")
        shortened = (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 1})).json()
        events = await streaming
        final = events[-1]
        assert final["type"] == "execution"
        assert final["execution"]["status"] == "cancelled"
        assert final["execution"]["error"]["code"] == "sandbox_expired"
        assert final["execution"]["stdout"] == "started\n"
        ended_sandbox = await until_ended(alice, sid, "expired")
        assert moment(ended_sandbox["terminated_at"]) >= moment(shortened["expires_at"])
        refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "sandbox_not_running"


async def test_patch_extends_the_lifetime_from_now_and_replaces_metadata(alice: httpx.AsyncClient) -> None:
    created = await create(alice, lifetime=30, metadata={"a": 1})
    sid = created["id"]
    response = await alice.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 600, "metadata": {"b": 2}})
    assert response.status_code == 200, response.text
    patched = response.json()
    assert 599 <= (moment(patched["expires_at"]) - moment(patched["last_active_at"])).total_seconds() <= 601
    assert moment(patched["expires_at"]) > moment(created["expires_at"])
    assert patched["metadata"] == {"b": 2}
    assert (await run(alice, sid, "1 + 1"))["result"] == {"text/plain": "2"}
    # and it still ends, at the new time: made short again, it expires.
    assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 1})).status_code == 200
    await until_ended(alice, sid, "expired")
    late = await alice.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 60})
    assert late.status_code == 409 and late.json()["error"]["code"] == "sandbox_not_running"


async def test_patch_refuses_bad_values_and_changes_nothing(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    sandbox = await create(alice, lifetime=600)
    sid = sandbox["id"]
    for body, status in (({"lifetime": 0}, 422), ({"lifetime": 86401}, 422), ({"color": "red"}, 400), ({}, 200)):
        response = await alice.patch(f"/api/v1/sandboxes/{sid}", json=body)
        assert response.status_code == status, response.text
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["expires_at"] == sandbox["expires_at"]
    stranger = await bob.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 5})
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "sandbox_not_found"


async def test_idle_sandbox_is_terminated_when_asked_and_activity_postpones_it(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice, on_idle="terminate"))["id"]
    assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"idle_timeout": 2})).status_code == 200
    # An execution running longer than the idle timeout is activity: the sandbox stays.
    long = await run(alice, sid, "import time; time.sleep(3.5); 'done'")
    assert long["status"] == "completed"
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
    idle = await until_ended(alice, sid, "idle")
    assert (moment(idle["terminated_at"]) - moment(long["finished_at"])).total_seconds() >= 2


async def sweeps_past(gateway: InProcessGateway, client: httpx.AsyncClient, sandbox_id: str) -> None:
    """Wait until the reaper looked at the sandbox twice after its idle timeout passed."""
    sandbox = (await client.get(f"/api/v1/sandboxes/{sandbox_id}")).json()
    reaper = gateway.app.sandboxes.reaper
    deadline = moment(sandbox["last_active_at"]).timestamp() + sandbox["idle_timeout"]
    await until(time.time, lambda now: now > deadline, what="the idle timeout to pass")
    seen = reaper.sweeps
    await until(lambda: reaper.sweeps, lambda sweeps: sweeps >= seen + 2, what="two sweeps of the reaper")


async def test_a_connected_websocket_keeps_its_sandbox_from_idling(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice, on_idle="terminate"))["id"]
    url = gateway.url.replace("http", "ws") + f"/api/v1/sandboxes/{sid}/stream"
    async with websockets.connect(url, additional_headers=auth("alice")):
        assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"idle_timeout": 1})).status_code == 200
        await sweeps_past(gateway, alice, sid)
        assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
    await until_ended(alice, sid, "idle")
