"""Where kernels run: ``--provisioner=auto`` takes the Docker engine when one answers, else local processes with a loud warning."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateways import InProcessGateway, create, run


async def test_auto_falls_back_to_local_processes_without_an_engine(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")  # where docker.from_env() looks
    async with InProcessGateway(tmp_path / "data", provisioner="auto") as gateway, \
            gateway.client(None) as anonymous, gateway.client("alice") as alice:
        health = (await anonymous.get("/health")).json()
        assert health["provisioner_requested"] == "auto" and health["provisioner"] == "local"
        assert health["status"] == "degraded" and health["engine"] is None
        assert len(health["warnings"]) == 1 and "LOCAL PROCESSES WITHOUT ISOLATION" in health["warnings"][0]
        assert (await anonymous.get("/ready")).status_code == 200  # sandboxes do start, as processes
        sandbox = await create(alice)
        assert sandbox["provisioner"] == "local"
        assert (await run(alice, sandbox["id"], "6 * 7"))["result"] == {"text/plain": "42"}


@pytest.mark.docker
async def test_auto_takes_the_engine_when_it_answers(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", provisioner="auto") as gateway, gateway.client(None) as anonymous:
        health = (await anonymous.get("/health")).json()
    assert health["provisioner_requested"] == "auto" and health["provisioner"] == "docker"
    assert health["status"] == "ok" and health["warnings"] == []
    assert health["engine"]["events_connected"] is True
