"""Records outlive the gateway process: graceful stop, and SIGKILL in the middle of an execution."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from tests.gateways import GatewayProcess, run
from tests.waiting import until, until_running


@pytest.fixture
async def process(tmp_path: Any) -> Any:
    gateway = GatewayProcess(tmp_path / "data")
    yield gateway
    gateway.kill()


async def test_records_survive_a_graceful_restart(process: GatewayProcess) -> None:
    await process.start()
    async with process.client() as alice:
        sid = (await alice.post("/api/v1/sandboxes")).json()["id"]
        ran = await run(alice, sid, "print('kept'); 6 * 7")
    assert await process.stop() == 0

    await process.start()
    async with process.client() as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
        assert sandbox["status"] == "terminated"
        assert sandbox["status_reason"] == "gateway_shutdown"
        again = (await alice.get(f"/api/v1/executions/{ran['id']}")).json()
        assert again == ran
        assert again["stdout"] == "kept\n" and again["result"]["text/plain"] == "42"
        refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
        assert refused.status_code == 409


async def test_sigkill_mid_execution_marks_the_records_and_leaves_no_kernel(process: GatewayProcess) -> None:
    await process.start()
    async with process.client() as alice:
        sid = (await alice.post("/api/v1/sandboxes")).json()["id"]
        done = await run(alice, sid, "import os; os.getpid()")
        kernel_pid = int(done["result"]["text/plain"])
        pending = await until_running(alice, sid, "import time; time.sleep(30)")
        await process.stop(signal.SIGKILL)
        with pytest.raises(httpx.TransportError):  # the gateway died mid-request
            await pending

    await process.start()
    async with process.client() as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
        assert sandbox["status"] == "terminated"
        assert sandbox["status_reason"] == "gateway_restarted"
        executions = (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
        assert [e["status"] for e in executions] == ["completed", "failed"]
        assert executions[1]["error"]["code"] == "gateway_restarted"
        assert executions[0] == done
    # A local kernel notices its parent is gone and exits (jupyter_client's JPY_PARENT_PID poller).
    await until(lambda: _alive(kernel_pid), lambda alive: not alive, what=f"the kernel {kernel_pid} to exit",
                timeout=30, interval=0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
