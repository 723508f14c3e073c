"""Gateway replicas sharing one real PostgreSQL 15 and one Docker engine: each runs what it holds a lease
on and touches nothing else at start-up; a replica that stops leaves its sandboxes to the others,
kernels and state intact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_SANDBOX, default_image
from gateway.replica import persisted_id
from tests.gateways import InProcessGateway, create, run
from tests.provisioned import container_of, containers_labelled
from tests.waiting import hold, pool_state, release, until_running

pytestmark = pytest.mark.docker

LEASES = "--lease-timeout=4"
NEVER_SATURATED = "--WarmPool.max_load_per_core=1000"  # (a loaded test machine must not hold the pool back)


def holder_of(replica: InProcessGateway, sandbox_id: str) -> bool:
    return replica.app.sandboxes.kernel_of(sandbox_id) is not None


def replica(data: Path, postgres_url: str, *args: str) -> InProcessGateway:
    return InProcessGateway(data, f"--store-url={postgres_url}", LEASES, *args, provisioner="docker")


async def test_a_replica_starting_leaves_the_others_sandboxes_alone(tmp_path: Path, docker_client: Any,
                                                                  postgres_url: str) -> None:
    stranger = docker_client.containers.create(  # another gateway's (a replica this store never saw)
        default_image(), ["sleep", "300"], labels={LABEL_INSTANCE: "someone-else", LABEL_SANDBOX: "not-ours"},
        network_mode="none", read_only=True, cap_drop=["ALL"])
    try:
        async with replica(tmp_path / "a", postgres_url, "--pool-size=1", NEVER_SATURATED) as a, a.client() as on_a:
            sid = (await create(on_a))["id"]
            assert (await run(on_a, sid, "x = 41"))["status"] == "completed"
            # One paused and resumed on the warm-pool kernel: its container carries the pooled id, of no record.
            resumed = (await create(on_a))["id"]
            assert (await run(on_a, resumed, "z = 'resumed'"))["status"] == "completed"
            assert (await on_a.post(f"/api/v1/sandboxes/{resumed}/pause")).status_code == 200
            await pool_state(on_a, ready=1)
            assert (await on_a.post(f"/api/v1/sandboxes/{resumed}/resume")).status_code == 200
            assert a.app.sandboxes._sandboxes[resumed].runtime_id != resumed
            busy = await until_running(on_a, sid, hold())
            await pool_state(on_a, ready=1)
            a_id = persisted_id(tmp_path / "a")
            a_containers = {c.id for c in containers_labelled(docker_client, f"{LABEL_INSTANCE}={a_id}")}
            assert len(a_containers) == 3  # the two sandboxes' and the warm pool's (no record: never claimed)

            async with replica(tmp_path / "b", postgres_url) as b, b.client() as on_b:
                assert persisted_id(tmp_path / "b") != a_id
                # b's start-up failed none of a's executions, ended none of its sandboxes, removed none
                # of its containers (not even the pooled one, which has no record), nor the stranger.
                assert {c.id for c in containers_labelled(docker_client, f"{LABEL_INSTANCE}={a_id}")} == a_containers
                assert docker_client.containers.list(all=True, filters={"id": stranger.id})
                assert (await on_b.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
                assert (await on_a.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"][-1]["status"] \
                    == "running"
            await release(on_a, sid)
            assert (await busy)["status"] == "completed"
            assert (await run(on_a, sid, "x + 1"))["result"] == {"text/plain": "42"}
            assert (await run(on_a, resumed, "z"))["result"] == {"text/plain": "'resumed'"}
    finally:
        stranger.remove(force=True)


async def test_a_replica_that_stops_leaves_its_sandboxes_to_the_others(tmp_path: Path, docker_client: Any,
                                                                      postgres_url: str) -> None:
    async with replica(tmp_path / "b", postgres_url) as b, b.client() as on_b:
        async with replica(tmp_path / "a", postgres_url) as a, a.client() as on_a:
            sid = (await create(on_a))["id"]
            untouched = (await create(on_a))["id"]  # nothing asks b for it before b stops too
            assert (await run(on_a, sid, "x = 41"))["status"] == "completed"
            container = container_of(docker_client, sid).id
        # a stopped: b was alive, so a left the sandbox running and freed its lease; b takes it over
        # (here at once, for this request) with its kernel and state.
        assert (await run(on_b, sid, "x + 1"))["result"] == {"text/plain": "42"}
        assert container_of(docker_client, sid).id == container
        assert (await on_b.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
    # b was alone when it stopped: it ended the sandboxes, as a single gateway does — also the one a
    # left it that it may not have looked at yet (else its container would run on, held by nobody).
    for ended in (sid, untouched):
        assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={ended}") == []


async def test_a_sandbox_whose_holder_is_gone_is_taken_over_on_the_next_request(tmp_path: Path, postgres_url: str) -> None:
    async with replica(tmp_path / "b", postgres_url) as b, b.client() as on_b:
        a = replica(tmp_path / "a", postgres_url, "--keep-sandboxes", "--SandboxManager.hand_over_on_shutdown=False")
        await a.__aenter__()
        async with a.client() as on_a:
            sid = (await create(on_a))["id"]
            assert (await run(on_a, sid, "x = 41"))["status"] == "completed"
            busy = await until_running(on_a, sid, hold())
        # a stops without handing over (as if it died, but it records the execution it was running as
        # ended): its lease lapses after its last heartbeat, with the kernel still busy.
        await a.__aexit__(None, None, None)
        with pytest.raises(httpx.HTTPError):
            await busy
        assert not holder_of(b, sid)
        # b's request waits for the lease to lapse; b takes the sandbox over (the same kernel, freed
        # from the code nobody waits for), and serves it.
        assert (await run(on_b, sid, "x + 1", timeout=30))["result"] == {"text/plain": "42"}
        assert holder_of(b, sid)
        executions = (await on_b.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
        assert [e["status"] for e in executions][-1] == "completed"
        assert all(e["status"] not in ("queued", "running") for e in executions)


async def test_replicas_stopping_together_leave_no_container_behind(tmp_path: Path, docker_client: Any,
                                                                    postgres_url: str) -> None:
    a, b = replica(tmp_path / "a", postgres_url), replica(tmp_path / "b", postgres_url)
    await a.__aenter__()
    try:
        await b.__aenter__()
    except BaseException:
        await a.__aexit__(None, None, None)
        raise
    async with a.client() as on_a, b.client() as on_b:
        made = [(await create(on_a))["id"], (await create(on_b))["id"]]
    # Each may see the other alive and leave its sandboxes to it; whichever finds itself last once it
    # let go ends them all.
    await asyncio.gather(a.__aexit__(None, None, None), b.__aexit__(None, None, None))
    for sid in made:
        assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={sid}") == []
