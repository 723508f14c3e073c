"""Paused sandboxes survive the gateway: pause, SIGKILL the gateway, start it again, resume."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.api.test_pool import NEVER_SATURATED
from tests.e2e.test_docker_restart import instance_of, process  # noqa: F401  (fixture)
from tests.gateways import GatewayProcess, create, run
from tests.provisioned import containers_labelled
from tests.waiting import pool_state

pytestmark = pytest.mark.docker


async def test_pause_gateway_killed_resume(process: GatewayProcess, tmp_path: Any) -> None:
    await process.start()
    async with process.client() as alice:
        sid = (await create(alice))["id"]
        assert (await run(alice, sid, "x = 41\ndef f(v):\n    return v + 1"))["status"] == "completed"
        assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/kept.txt", content=b"still here")).status_code == 201
        paused = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    await process.stop(signal.SIGKILL)
    assert (tmp_path / "data" / "paused" / sid / "files.tar.gz").is_file()

    await process.start()
    async with process.client() as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
        assert sandbox["status"] == "paused" and set(sandbox["snapshot"]["variables"]) == {"x", "f"}
        resumed = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
        assert resumed.status_code == 200, resumed.text
        assert set(resumed.json()["restore"]["variables"]) == {"x", "f"}
        after = await run(alice, sid, "f(x), open('kept.txt').read()")
        assert after["result"] == {"text/plain": "(42, 'still here')"}
        assert not (tmp_path / "data" / "paused" / sid).exists()
    await process.stop()


async def test_a_half_saved_state_is_removed_at_start(process: GatewayProcess, tmp_path: Any) -> None:
    partial = tmp_path / "data" / "paused" / "0b9e0000-0000-0000-0000-000000000000.partial"
    partial.mkdir(parents=True)
    (partial / "files.tar.gz").write_bytes(b"half")
    await process.start()
    assert not partial.exists()  # (removed before the gateway listens)
    await process.stop()


async def test_a_sandbox_resumed_on_a_pooled_kernel_is_found_again_after_sigkill(
    process: GatewayProcess, docker_client: Any
) -> None:
    process.args = ("--pool-size=1", NEVER_SATURATED)
    await process.start()
    async with process.client() as alice, process.client(None) as anonymous:
        await pool_state(anonymous, ready=1)
        sid = (await create(alice))["id"]
        await run(alice, sid, "x = 41")
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
        await pool_state(anonymous, ready=1)
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/resume")).json()["status"] == "running"
        assert "resume_pool" in (await anonymous.get("/metrics")).text
    await process.stop(signal.SIGKILL)

    process.args = ()  # (no pool this time: what is left is what the killed gateway ran)
    await process.start()
    async with process.client() as alice:
        assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"  # re-attached
        assert (await run(alice, sid, "x + 1", timeout=20))["result"] == {"text/plain": "42"}
        assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/f.txt", content=b"F")).status_code == 201
        # Only its container is left: the killed gateway's spare pooled one was an orphan, removed.
        sandbox_labels = {c.labels.get("code-gateway.sandbox") for c in containers_labelled(
            docker_client, f"code-gateway.instance={instance_of(process.data_dir)}")}
        assert len(sandbox_labels) == 1 and sid not in sandbox_labels  # (it runs under the pooled id)
    await process.stop()
