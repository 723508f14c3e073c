"""A gateway whose store fails for real (SQLite's disk fills up, PostgreSQL's server stops)
acknowledges nothing it has not stored, refuses new work with 503 ``store_unavailable`` and says so on /ready,
and stores everything it held once the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateways import InProcessGateway, create, run
from tests.stores import BACKENDS, Backend, backend_for
from tests.waiting import until

BIG_OUTPUT = 2_000_000  # characters printed: a record that needs room a full disk does not have


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, request, tmp_path) as chosen:
        yield chosen


async def test_a_failing_store_holds_results_refuses_new_work_and_loses_nothing(
        backend: Backend, tmp_path: Path) -> None:
    args = backend.gateway_args()
    async with InProcessGateway(tmp_path / "data", *args) as gateway, \
            gateway.client("alice") as alice, gateway.client(None) as anonymous:
        sandbox = await create(alice)
        assert (await anonymous.get("/ready")).status_code == 200
        backend.fail()

        # The kernel runs this, but its record cannot be stored: no answer until it is.
        code = f"print('x' * {BIG_OUTPUT})"
        execute = f"/api/v1/sandboxes/{sandbox['id']}/execute"
        held = asyncio.ensure_future(alice.post(execute, json={"code": code}))
        ready = await until(lambda: _not_ready(anonymous), what="/ready to turn 503")
        assert not ready["ready"] and any(word in problem for problem in ready["problems"]
                                          for word in backend.failure_words), ready
        health = (await anonymous.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["store"]["available"] is False and health["store"]["held_writes"] >= 1

        # New work is refused, with the reason, instead of being acknowledged.
        for response in (await alice.post("/api/v1/sandboxes", json={}),
                         await alice.post(execute, json={"code": "1 + 1"}),
                         await alice.delete(f"/api/v1/sandboxes/{sandbox['id']}")):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "store_unavailable", error
            assert any(word in error["message"] for word in backend.failure_words), error
        assert not held.done()

        backend.recover()  # the held records land, and only then is the client answered
        response = await asyncio.wait_for(held, 60)
        assert response.status_code == 200, response.text
        execution = response.json()
        assert execution["status"] == "completed" and len(execution["stdout"]) == BIG_OUTPUT + 1
        assert (await anonymous.get("/ready")).status_code == 200
        assert (await run(alice, sandbox["id"], "1 + 1"))["result"]["text/plain"] == "2"

    # Durable: a new gateway on the same store finds the result; the refused work left no trace.
    async with InProcessGateway(tmp_path / "data", *args) as gateway, gateway.client("alice") as alice:
        stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
        assert stored["status"] == "completed" and stored["stdout"] == execution["stdout"]
        history = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]
        assert [e["code"] for e in history] == [code, "1 + 1"]
        sandboxes = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
        assert [s["id"] for s in sandboxes] == [sandbox["id"]]


async def _not_ready(client: httpx.AsyncClient) -> Any:
    response = await client.get("/ready")
    return response.json() if response.status_code == 503 else None
