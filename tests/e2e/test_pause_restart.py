"""Paused sandboxes survive the gateway: pause, SIGKILL the gateway, start it again, resume."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.e2e.test_docker_restart import process  # noqa: F401  (fixture)
from tests.gateways import GatewayProcess, create, run

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
