"""The warm pool in a real gateway: instant sandboxes that still get their owner's env and limits."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.gateways import InProcessGateway, create, run
from tests.waiting import HOLD, pool_state, release, until, until_running

# Other tests load this 2-core machine; the pool must refill here regardless.
NEVER_SATURATED = "--WarmPool.max_load_per_core=1000"


async def test_a_pooled_sandbox_becomes_the_callers(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client() as alice:
        await pool_state(alice, ready=1)
        response = await alice.post("/api/v1/sandboxes", json={"env": {"MINE": "yes"}, "metadata": {"m": 1},
                                                               "resources": {"memory_mb": 256}})
        assert response.status_code == 201
        sandbox = response.json()
        assert sandbox["owner"] == "alice" and sandbox["metadata"] == {"m": 1}
        assert sandbox["resources"]["memory_mb"] == 256 and sandbox["status"] == "running"
        state = await pool_state(alice, ready=1)  # refilled
        assert state["claimed"] == 1
        execution = await run(alice, sandbox["id"], "import os; x = 1; os.environ['MINE']")
        assert execution["result"]["text/plain"] == "'yes'"
        assert execution["execution_count"] == 1  # the setup left no trace in the kernel's history
        assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}")).json()["owner"] == "alice"
        async with gateway.client("bob") as bob:
            assert (await bob.get(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 404
        # Restart keeps the owner's environment (the fresh kernel is started with it).
        await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/restart")
        again = await run(alice, sandbox["id"], "import os; os.environ['MINE']")
        assert again["result"]["text/plain"] == "'yes'"


async def test_requests_that_do_not_fit_start_cold(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client() as alice:
        await pool_state(alice, ready=1)
        response = await alice.post("/api/v1/sandboxes", json={"resources": {"memory_mb": 1024}})
        assert response.status_code == 201
        state = (await alice.get("/health")).json()["pool"]
        assert state["claimed"] == 0 and state["ready"] == 1


async def test_pool_size_zero_turns_it_off(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        state = (await client.get("/health")).json()["pool"]
    assert state["size"] == 0 and state["ready"] == 0 and not state["starting"]


async def test_refilling_waits_while_every_core_is_busy(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the gateway sees two cores (as CI has): two busy sandboxes fill them
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client() as alice:
        await pool_state(alice, ready=1)
        first = await create(alice)  # from the pool, which refills: nothing is busy
        await pool_state(alice, ready=1)
        second = await create(alice, resources={"memory_mb": 1024})  # does not fit the pool: started cold
        held = [await until_running(alice, sandbox["id"], HOLD) for sandbox in (first, second)]
        assert (await alice.get("/health")).json()["sandboxes"]["busy"] == 2
        await create(alice)  # takes the pooled one; refilling must wait for a free core
        state = await until(lambda: alice.get("/health"), lambda r: r.json()["pool"]["paused"] is not None,
                            what="the pool to pause")
        assert state.json()["pool"] == {**state.json()["pool"], "paused": "the machine is saturated", "ready": 0,
                                        "starting": False, "claimed": 2}
        for sandbox in (first, second):
            await release(alice, sandbox["id"])
        assert [(await execution)["status"] for execution in held] == ["completed", "completed"]
        refilled = await pool_state(alice, ready=1)  # a core is free again
        assert refilled["paused"] is None and refilled["claimed"] == 2


async def test_refilling_waits_behind_cold_starts_for_requests(tmp_path: Any) -> None:
    """A request that takes the pooled sandbox while another starts cold: the pool refills after it, not beside it."""
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client() as alice:
        manager = gateway.app.sandboxes
        await pool_state(alice, ready=1)
        cold = asyncio.ensure_future(create(alice, resources={"memory_mb": 1024}))  # does not fit the pool
        await until(manager.saturated, lambda why: why == "sandboxes are being started for requests",
                    what="the cold start to be under way", interval=0.005)
        await create(alice)  # takes the pooled one while the cold one still starts
        # (a claim is a store write; a cold start is a container and a kernel: still under way)
        assert not cold.done(), "the cold start ended before the pooled create: nothing to see"
        # The refill looked when the claim woke it, before that create was answered: it waits.
        state = manager.pool.describe()
        assert state["paused"] == "sandboxes are being started for requests" and not state["starting"]
        await cold
        refilled = await pool_state(alice, ready=1)  # behind it, woken by its end
        assert refilled["paused"] is None and refilled["claimed"] == 1


async def test_refilling_waits_behind_request_starts_only_so_long(tmp_path: Any) -> None:
    """Starts for requests that keep overlapping (one never-ending start stands for them here) hold
    the refill at most ``--WarmPool.max_wait_behind_starts``: the pool refills anyway, not never."""
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED,
                                "--WarmPool.max_wait_behind_starts=2") as gateway, gateway.client() as alice:
        manager = gateway.app.sandboxes
        await pool_state(alice, ready=1)
        endless = asyncio.ensure_future(asyncio.Event().wait())
        manager._starts.add(endless)  # type: ignore[arg-type]  # a start that is always under way
        try:
            assert manager.saturated() == "sandboxes are being started for requests"
            await create(alice)  # takes the pooled one
            refilled = await pool_state(alice, ready=1)  # after the wait's bound, though the start goes on
            assert refilled["claimed"] == 1 and not endless.done()
        finally:
            manager._starts.discard(endless)  # type: ignore[arg-type]
            endless.cancel()
