"""Containers outlive a gateway process: re-attach after SIGKILL, keep or remove on graceful stop, remove orphans."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_SANDBOX, default_image
from gateway.replica import persisted_id
from tests.gateways import GatewayProcess, InProcessGateway
from tests.gateways import create, run
from tests.provisioned import container_of, containers_labelled
from tests.waiting import until_running, until_status

pytestmark = pytest.mark.docker


@pytest.fixture
async def process(tmp_path: Any, docker_client: Any) -> Any:
    gateway = GatewayProcess(tmp_path / "data", provisioner="docker")
    yield gateway
    gateway.kill()
    # Whatever a failed test left behind goes with it.
    for container in containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(tmp_path / 'data')}"):
        container.remove(force=True)


def instance_of(data_dir: Any) -> str:
    """The replica id a gateway on ``data_dir`` labels its containers with (kept in the data directory)."""
    return persisted_id(Path(data_dir))


async def test_state_survives_a_sigkilled_gateway(process: GatewayProcess, docker_client: Any, tmp_path: Any) -> None:
    await process.start()
    async with process.client() as alice:
        sid = (await create(alice))["id"]
        assert (await run(alice, sid, "x = 41"))["status"] == "completed"
        pending = await until_running(alice, sid, "import time\ntime.sleep(300)")
        await process.stop(signal.SIGKILL)
        with pytest.raises(httpx.TransportError):  # the gateway died mid-request
            await pending
    container_id = container_of(docker_client, sid).id
    assert container_of(docker_client, sid).status == "running"  # the kernel outlived its gateway

    await process.start()
    async with process.client() as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
        assert sandbox["status"] == "running", sandbox
        # The execution the killed gateway was waiting for is over; the kernel was freed from it.
        executions = (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
        assert executions[-1]["status"] == "failed" and executions[-1]["error"]["code"] == "gateway_restarted"
        assert (await run(alice, sid, "x + 1", timeout=20))["result"] == {"text/plain": "42"}
        assert container_of(docker_client, sid).id == container_id  # the same container, re-attached
        # Death is still watched after re-attaching.
        container_of(docker_client, sid).kill()
        sandbox = await until_status(alice, sid, "failed")
        assert sandbox["status_reason"] == "sandbox_died"
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
        assert (await run(alice, sid, "1 + 1"))["result"] == {"text/plain": "2"}

    # A graceful stop (no --keep-sandboxes) removes the containers and ends the records.
    assert await process.stop() == 0
    assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(tmp_path / 'data')}") == []
    await process.start()
    async with process.client() as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
        assert sandbox["status"] == "terminated" and sandbox["status_reason"] == "gateway_shutdown"
    assert await process.stop() == 0


async def test_keep_sandboxes_leaves_containers_to_re_attach(tmp_path: Any, docker_client: Any) -> None:
    data = tmp_path / "data"
    async with InProcessGateway(data, "--keep-sandboxes", provisioner="docker") as first:
        async with first.client("alice") as alice:
            sid = (await create(alice))["id"]
            await run(alice, sid, "x = 41")
    assert container_of(docker_client, sid).status == "running"
    async with InProcessGateway(data, provisioner="docker") as second:
        async with second.client("alice") as alice:
            assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
    assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={sid}") == []


async def test_orphans_and_dead_containers_are_cleared_at_start(tmp_path: Any, docker_client: Any) -> None:
    data = tmp_path / "data"
    async with InProcessGateway(data, "--keep-sandboxes", provisioner="docker") as first:
        async with first.client("alice") as alice:
            kept = (await create(alice))["id"]
            died = (await create(alice))["id"]
    container_of(docker_client, died).kill()  # dies while no gateway runs
    instance = instance_of(data)
    orphan = docker_client.containers.create(
        default_image(), ["sleep", "300"], labels={LABEL_INSTANCE: instance, LABEL_SANDBOX: str(uuid.uuid4())},
        network_mode="none", read_only=True, cap_drop=["ALL"],
    )
    orphan.start()
    stranger = docker_client.containers.create(  # another gateway's container: never touched
        default_image(), ["sleep", "300"], labels={LABEL_INSTANCE: "someone-else", LABEL_SANDBOX: str(uuid.uuid4())},
        network_mode="none", read_only=True, cap_drop=["ALL"],
    )
    try:
        async with InProcessGateway(data, provisioner="docker") as second:
            assert docker_client.containers.list(all=True, filters={"id": orphan.id}) == []
            assert docker_client.containers.list(all=True, filters={"id": stranger.id}) != []
            assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={died}") == []
            async with second.client("alice") as alice:
                assert (await alice.get(f"/api/v1/sandboxes/{kept}")).json()["status"] == "running"
                ended = (await alice.get(f"/api/v1/sandboxes/{died}")).json()
                assert ended["status"] == "terminated" and ended["status_reason"] == "gateway_restarted"
    finally:
        stranger.remove(force=True)
    assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}") == []
