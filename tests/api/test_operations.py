"""Operations endpoints: /ready and /metrics (Prometheus text), without a key."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_pool import NEVER_SATURATED
from tests.gateways import InProcessGateway, create, run
from tests.waiting import pool_state, until_status


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_ready(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        response = await anonymous.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "problems": []}


async def test_metrics_count_what_happened(gateway: InProcessGateway, alice: httpx.AsyncClient,
                                           sandbox: dict[str, Any]) -> None:
    await run(alice, sandbox["id"], "1 + 1")
    await run(alice, sandbox["id"], "1 / 0")
    async with gateway.client(None) as anonymous:
        response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    seen = samples(response.text)
    assert seen[("code_gateway_executions_total", (("status", "completed"),))] == 1
    assert seen[("code_gateway_executions_total", (("status", "failed"),))] == 1
    assert seen[("code_gateway_execution_seconds_count", ())] == 2
    assert seen[("code_gateway_sandbox_start_seconds_count", (("source", "cold"),))] == 1
    assert seen[("code_gateway_sandboxes", (("state", "live"),))] == 1
    assert seen[("code_gateway_http_request_seconds_count", (("method", "POST"), ("status", "200")))] == 2
    assert "sandbox_id" not in response.text and sandbox["id"] not in response.text


async def test_metrics_of_the_pool_and_of_kernel_exits(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client("alice") as alice, gateway.client(None) as anonymous:

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return samples((await anonymous.get("/metrics")).text)

        await pool_state(alice, ready=1)
        assert (await scrape())[("code_gateway_pool_ready", ())] == 1
        sandbox = await create(alice)  # taken from the pool
        await pool_state(alice, ready=1)  # and refilled
        seen = await scrape()
        assert seen[("code_gateway_sandbox_start_seconds_count", (("source", "pool"),))] == 1
        assert seen.get(("code_gateway_sandbox_start_seconds_count", (("source", "cold"),)), 0) == 0
        assert seen[("code_gateway_pool_ready", ())] == 1
        assert ("code_gateway_sandbox_exits_total", (("reason", "kernel_died"),)) not in seen
        died = await run(alice, sandbox["id"], "import os; os._exit(1)")
        assert died["error"]["code"] == "kernel_died"
        await until_status(alice, sandbox["id"], "failed")
        assert (await scrape())[("code_gateway_sandbox_exits_total", (("reason", "kernel_died"),))] == 1
