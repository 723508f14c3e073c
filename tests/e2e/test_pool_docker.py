"""The warm pool with real containers: a pooled container is fitted to the request that claims it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_pool import NEVER_SATURATED
from tests.gateways import InProcessGateway, run
from tests.provisioned import container_of
from tests.waiting import pool_state

pytestmark = pytest.mark.docker


async def test_claimed_container_gets_the_requested_limits_and_env(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED, provisioner="docker") as gw, \
            gw.client() as alice:
        await pool_state(alice, ready=1)
        response = await alice.post("/api/v1/sandboxes", json={
            "resources": {"cpu": 0.5, "memory_mb": 256, "pids": 128}, "env": {"TOKEN_FOR_CODE": "t"}})
        sandbox = response.json()
        assert (await pool_state(alice, ready=1))["claimed"] == 1
        host = container_of(docker_client, sandbox["id"]).attrs["HostConfig"]
        assert host["Memory"] == host["MemorySwap"] == 256 << 20
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 128
        execution = await run(alice, sandbox["id"], "import os; os.environ['TOKEN_FOR_CODE']")
        assert execution["result"]["text/plain"] == "'t'"
        # The lowered memory limit holds.
        bomb = await run(alice, sandbox["id"], "chunks = [b'x' * (300 << 20)]")
        assert bomb["status"] == "failed" and bomb["error"]["code"] == "out_of_memory"
    assert docker_client.containers.list(all=True, filters={"label": f"code-gateway.sandbox={sandbox['id']}"}) == []


async def test_pooled_containers_do_not_outlive_the_gateway(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--pool-size=2", NEVER_SATURATED, provisioner="docker") as gw, \
            gw.client() as alice:
        await pool_state(alice, ready=2)
        instance = (await alice.get("/health")).json()["engine"]["instance"]
    assert docker_client.containers.list(all=True, filters={"label": f"code-gateway.instance={instance}"}) == []
