"""Usage figures: GET /sandboxes/{id}/metrics from the container's cgroup (or a local kernel's processes),
and only totals in Prometheus."""

from __future__ import annotations

from typing import Any

import pytest

from tests.provisioned import PROVISIONERS, create, gateway_for, run
from tests.waiting import until

BURN = """
import os, time
ballast = bytearray(120 << 20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
open('five.bin', 'wb').write(os.urandom(5 << 20))
end = time.process_time() + 0.5
while time.process_time() < end:
    pass
"""


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_a_sandbox_reports_what_it_uses(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path, "--SandboxManager.usage_interval=0.2") as gateway, \
            gateway.client("alice") as alice, gateway.client(None) as anonymous:
        sid = (await create(alice, resources={"memory_mb": 512, "disk_mb": 64}))["id"]
        assert (await run(alice, sid, BURN))["status"] == "completed"
        response = await alice.get(f"/api/v1/sandboxes/{sid}/metrics")
        assert response.status_code == 200, response.text
        usage = response.json()
        assert usage["sandbox_id"] == sid and usage["status"] == "running"
        assert usage["cpu"]["seconds"] >= 0.5 and usage["cpu"]["limit_cores"] == 1
        assert usage["memory"]["current_bytes"] >= 100 << 20
        assert usage["memory"]["limit_bytes"] == 512 << 20
        if usage["memory"]["peak_bytes"] is not None:  # (cgroup v2 before Linux 5.19 keeps no peak)
            assert usage["memory"]["peak_bytes"] >= usage["memory"]["current_bytes"]
        assert 5 << 20 <= usage["disk"]["workdir_bytes"] < 8 << 20
        assert usage["disk"]["limit_bytes"] == 64 << 20
        assert usage["pids"]["current"] >= 1 and usage["pids"]["limit"] == 256

        freed = await run(alice, sid, "del ballast; import gc; gc.collect()")
        assert freed["status"] == "completed"
        after = (await alice.get(f"/api/v1/sandboxes/{sid}/metrics")).json()
        assert after["memory"]["current_bytes"] < usage["memory"]["current_bytes"] - (60 << 20)

        # Prometheus gets the totals, never a sandbox's id.
        text = (await until(lambda: anonymous.get("/metrics"),
                            lambda r: "code_gateway_sandbox_memory_bytes 0.0" not in r.text
                            and "code_gateway_sandbox_memory_bytes" in r.text,
                            what="a usage sample in /metrics")).text
        assert sid not in text
        assert "code_gateway_sandbox_cpu_seconds" in text and "code_gateway_paused_bytes" in text

        assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
        paused = (await alice.get(f"/api/v1/sandboxes/{sid}/metrics")).json()
        assert paused["status"] == "paused" and paused["memory"]["current_bytes"] is None
        assert paused["disk"]["saved_bytes"] > 5 << 20  # the random file does not compress


async def test_metrics_of_someone_elses_sandbox_are_not_found(alice: Any, bob: Any) -> None:
    sid = (await create(alice))["id"]
    response = await bob.get(f"/api/v1/sandboxes/{sid}/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "sandbox_not_found"
