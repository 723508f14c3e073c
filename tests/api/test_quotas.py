"""Per-user quotas over real HTTP: each one's 429 with Retry-After and a message naming it; counted from
the store (atomic under a race, and a restart resets nothing); GET /api/v1/usage."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.gateways import InProcessGateway, create, run


def refused(response: httpx.Response, *words: str) -> int:
    """The Retry-After of a quota refusal naming ``words``."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    for word in words:
        assert word in error["message"], error["message"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 3600
    return retry_after


async def test_live_sandboxes(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-sandboxes-per-user=2") as gateway, \
            gateway.client("alice") as alice, gateway.client("bob") as bob:
        first = await create(alice, lifetime=120)
        await create(alice)
        retry_after = refused(await alice.post("/api/v1/sandboxes", json={}), "live sandboxes", "2 of at most 2")
        assert retry_after <= 120  # the first one expires by then
        assert (await alice.get("/api/v1/usage")).json()["sandboxes"] == {"used": 2, "limit": 2}
        await create(bob)  # a quota is per user
        # A paused sandbox does not count as live; a deleted one frees its slot.
        assert (await alice.post(f"/api/v1/sandboxes/{first['id']}/pause")).json()["status"] == "paused"
        third = await create(alice)
        refused(await alice.post(f"/api/v1/sandboxes/{first['id']}/resume"), "live sandboxes")
        refused(await alice.post(f"/api/v1/sandboxes/{first['id']}/execute", json={"code": "1"}), "live sandboxes")
        assert (await alice.get(f"/api/v1/sandboxes/{first['id']}")).json()["status"] == "paused"  # nothing lost
        assert (await alice.delete(f"/api/v1/sandboxes/{third['id']}")).status_code == 204
        assert (await run(alice, first["id"], "1 + 1"))["result"] == {"text/plain": "2"}  # resumed now


async def test_racing_creates_get_exactly_the_quota(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-sandboxes-per-user=3") as gateway, \
            gateway.client("alice") as alice:
        responses = await asyncio.gather(*(alice.post("/api/v1/sandboxes", json={}) for _ in range(8)))
        assert sorted(r.status_code for r in responses) == [201] * 3 + [429] * 5
        assert len((await alice.get("/api/v1/sandboxes", params={"status": "running"})).json()["sandboxes"]) == 3


async def test_cpu_and_memory(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-cpu-per-user=1.5", "--max-memory-mb-per-user=768") as gateway, \
            gateway.client("alice") as alice:
        await create(alice, resources={"cpu": 1, "memory_mb": 256})
        refused(await alice.post("/api/v1/sandboxes", json={"resources": {"cpu": 1}}), "CPU", "1.5", "asks for 1")
        refused(await alice.post("/api/v1/sandboxes", json={"resources": {"cpu": 0.5, "memory_mb": 600}}),
                "memory", "768 MiB", "asks for 600")
        await create(alice, resources={"cpu": 0.5, "memory_mb": 512})
        usage = (await alice.get("/api/v1/usage")).json()
        assert usage["cpu"] == {"used": 1.5, "limit": 1.5} and usage["memory_mb"] == {"used": 768, "limit": 768}


async def test_paused_sandboxes(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-paused-per-user=1") as gateway, \
            gateway.client("alice") as alice:
        one, two = (await create(alice))["id"], (await create(alice))["id"]
        assert (await alice.post(f"/api/v1/sandboxes/{one}/pause")).json()["status"] == "paused"
        await run(alice, two, "x = 2")
        refused(await alice.post(f"/api/v1/sandboxes/{two}/pause"), "paused sandboxes", "1 of at most 1")
        still = (await alice.get(f"/api/v1/sandboxes/{two}")).json()
        assert still["status"] == "running" and still["snapshot"] is None
        assert not (tmp_path / "data" / "paused" / two).exists()
        assert (await run(alice, two, "x"))["result"] == {"text/plain": "2"}
        assert (await alice.get("/api/v1/usage")).json()["paused_sandboxes"] == {"used": 1, "limit": 1}


async def test_executions_per_minute_survive_a_restart(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--max-executions-per-minute=3") as gateway, \
            gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        for _ in range(3):
            assert (await run(alice, sid, "1"))["status"] == "completed"
        retry_after = refused(await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"}),
                              "executions per minute", "started 3", "limit is 3")
        assert retry_after <= 60
        assert (await alice.get("/api/v1/usage")).json()["executions_per_minute"] == {"used": 3, "limit": 3}
        assert len((await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]) == 3
    # A new gateway on the same store knows what was used.
    async with InProcessGateway(tmp_path / "data", "--max-executions-per-minute=3") as gateway, \
            gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        refused(await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"}), "executions per minute")


async def test_usage_shows_limits_of_zero_as_no_limit(alice: httpx.AsyncClient) -> None:
    usage = (await alice.get("/api/v1/usage")).json()
    assert usage == {
        "user": "alice", "sandboxes": {"used": 0, "limit": 20}, "cpu": {"used": 0, "limit": 0},
        "memory_mb": {"used": 0, "limit": 0}, "paused_sandboxes": {"used": 0, "limit": 100},
        "executions_per_minute": {"used": 0, "limit": 0},
    }
