"""A gateway whose disk fills up: it acknowledges nothing it has not stored, refuses new work with
503 ``store_unavailable`` and says so on /ready, and stores everything held once there is room."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.disks import fill, small_disk
from tests.gateways import InProcessGateway, create, run
from tests.waiting import until

BIG_OUTPUT = 2_000_000  # characters printed: a record that needs room the full disk does not have


async def test_a_full_disk_holds_results_refuses_new_work_and_loses_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size_mb=16) as disk:
        data_dir = disk / "data"
        async with InProcessGateway(data_dir, f"--runtime-dir={tmp_path / 'run'}") as gateway, \
                gateway.client("alice") as alice, gateway.client(None) as anonymous:
            sandbox = await create(alice)
            assert (await anonymous.get("/ready")).status_code == 200
            filler = fill(disk)

            # The kernel runs this, but its record cannot be stored: no answer until it is.
            held = asyncio.ensure_future(alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute",
                                                    json={"code": f"print('x' * {BIG_OUTPUT})"}))
            ready = await until(lambda: _not_ready(anonymous), what="/ready to turn 503")
            assert not ready["ready"] and any("full" in p for p in ready["problems"]), ready
            health = (await anonymous.get("/health")).json()
            assert health["status"] == "degraded"
            assert health["store"]["available"] is False and health["store"]["held_writes"] >= 1

            # New work is refused, with the reason, instead of being acknowledged.
            execute = f"/api/v1/sandboxes/{sandbox['id']}/execute"
            for response in (await alice.post("/api/v1/sandboxes", json={}),
                             await alice.post(execute, json={"code": "1 + 1"})):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "store_unavailable" and "full" in error["message"]
            assert not held.done()

            filler.unlink()  # room again: the held records land, and only then is the client answered
            response = await asyncio.wait_for(held, 60)
            assert response.status_code == 200, response.text
            execution = response.json()
            assert execution["status"] == "completed" and len(execution["stdout"]) == BIG_OUTPUT + 1
            assert (await anonymous.get("/ready")).status_code == 200
            assert (await run(alice, sandbox["id"], "1 + 1"))["result"]["text/plain"] == "2"

        # Durable: a new gateway on the same data finds the result; the refused work left no trace.
        async with InProcessGateway(data_dir, f"--runtime-dir={tmp_path / 'run'}") as gateway, \
                gateway.client("alice") as alice:
            stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
            assert stored["status"] == "completed" and stored["stdout"] == execution["stdout"]
            history = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]
            assert [e["code"] for e in history] == [f"print('x' * {BIG_OUTPUT})", "1 + 1"]
            sandboxes = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
            assert [s["id"] for s in sandboxes] == [sandbox["id"]]


async def _not_ready(client: httpx.AsyncClient) -> Any:
    response = await client.get("/ready")
    return response.json() if response.status_code == 503 else None
