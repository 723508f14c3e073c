"""Limits on queued work and listings, against a real gateway with Docker sandboxes.

- Past ``max_queued_executions`` waiting in one sandbox, a new execute is 429 ``too_many_queued``
  with ``Retry-After`` over REST, and an ``error`` event with ``retry_after`` over /stream; the
  queued ones all run.
- ``GET /sandboxes`` is paged (``limit``, ``offset``, ``total``).
- The notebook export streams from the store: a client that does not read it holds a few cells
  in the gateway, not the history (peak memory from /proc), and a reader gets a valid notebook.
- An exception with a huge message: the execution's ``error`` (from the kernel's reply, which has
  no output cap of its own) keeps at most ``MAX_REPLY_TEXT`` of its value and traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nbformat
import pytest
import websockets

from gateway.execution.executor import MAX_REPLY_TEXT
from tests.api.test_errors import assert_error
from tests.conftest import docker_or_fail
from tests.gateways import KEYS, GatewayProcess, InProcessGateway, create, run
from tests.stalled import StalledClient, memory_of
from tests.waiting import HOLD, executions_of, release, until, until_running, wait_finished

pytestmark = pytest.mark.docker

MiB = 1 << 20


@pytest.fixture
async def gateway(tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    docker_or_fail().close()
    async with InProcessGateway(tmp_path / "data", "--SandboxManager.max_queued_executions=3",
                                provisioner="docker") as running:
        yield running


@pytest.fixture
async def alice(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("alice") as client:
        yield client


async def test_past_the_queue_limit_executes_are_429_on_rest_and_websocket(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    holding = await until_running(alice, sid, HOLD)
    waiting = [asyncio.create_task(run(alice, sid, f"{n} * 2")) for n in range(3)]
    await until(lambda: executions_of(alice, sid), lambda e: len(e) == 4, what="three executions queued")

    refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
    assert_error(refused, 429, "too_many_queued", "3")
    assert refused.headers["Retry-After"] == "1"
    url = gateway.url.replace("http", "ws") + f"/api/v1/sandboxes/{sid}/stream"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEYS['alice']}"}) as socket:
        await socket.send(json.dumps({"type": "execute", "id": "late", "code": "1"}))
        event = json.loads(await asyncio.wait_for(socket.recv(), 30))
    assert (event["type"], event["id"], event["error"]["code"]) == ("error", "late", "too_many_queued")
    assert event["error"]["retry_after"] == 1
    assert len(await executions_of(alice, sid)) == 4  # nothing refused was stored

    await release(alice, sid)
    assert (await holding)["status"] == "completed"
    assert [(await task)["result"] for task in waiting] == [{"text/plain": str(n * 2)} for n in range(3)]
    assert (await run(alice, sid, "'room again'"))["status"] == "completed"


async def test_sandboxes_are_listed_by_pages_with_the_total(alice: httpx.AsyncClient) -> None:
    ids = [(await create(alice))["id"] for _ in range(3)]
    page = (await alice.get("/api/v1/sandboxes?limit=2")).json()
    assert [s["id"] for s in page["sandboxes"]] == ids[:2]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    rest = (await alice.get("/api/v1/sandboxes?limit=2&offset=2")).json()
    assert [s["id"] for s in rest["sandboxes"]] == ids[2:] and rest["total"] == 3
    default = (await alice.get("/api/v1/sandboxes")).json()
    assert len(default["sandboxes"]) == 3 and default["limit"] == 100
    await alice.delete(f"/api/v1/sandboxes/{ids[0]}")
    running = (await alice.get("/api/v1/sandboxes?status=running&limit=1")).json()
    assert running["total"] == 2 and [s["id"] for s in running["sandboxes"]] == ids[1:2]
    for query in ("limit=0", "limit=1001", "limit=x", "offset=-1"):
        assert_error(await alice.get(f"/api/v1/sandboxes?{query}"), 400, "invalid_request", "limit")


async def test_the_notebook_export_streams_from_the_store(tmp_path: Any) -> None:
    docker_or_fail().close()
    gateway = await GatewayProcess(tmp_path / "data", provisioner="docker").start()
    try:
        async with gateway.client("alice") as alice:
            sid = (await create(alice))["id"]
            two_mib = "print('n' * (2 << 20))"
            for _ in range(40):  # an 80 MiB history
                assert (await run(alice, sid, two_mib))["status"] == "completed"
            assert gateway.process is not None
            before = memory_of(gateway.process.pid)
            stalled = await StalledClient.open(int(gateway.url.rsplit(":", 1)[1]))
            stalled.writer.write(f"GET /api/v1/sandboxes/{sid}/notebook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 f"Authorization: Bearer {KEYS['alice']}\r\n\r\n".encode())
            await stalled.writer.drain()
            # The export has begun (a whole-document export would have been built before this),
            # then the client reads nothing more; meanwhile the gateway answers others at once.
            assert (await stalled.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            for _ in range(5):
                response = await asyncio.wait_for(alice.get("/health"), 10)
                assert response.status_code == 200
            grown = memory_of(gateway.process.pid)["peak"] - before["peak"]
            assert grown < 60 * MiB, f"a stalled export grew the gateway's peak memory by {grown / MiB:.0f} MiB"
            stalled.close()
            response = await alice.get(f"/api/v1/sandboxes/{sid}/notebook")
            assert response.status_code == 200
            notebook = nbformat.reads(response.text, as_version=4)
            nbformat.validate(notebook)
            assert len(notebook.cells) == 40
            assert all(cell.outputs[0]["text"] == "n" * (2 << 20) + "\n" for cell in notebook.cells)
    finally:
        await gateway.stop()


async def test_an_exception_with_a_huge_message_keeps_a_bounded_error(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    huge = 2 * MiB  # (the error output, value and traceback, is under the 5 MiB per-output cap: kept whole)
    answer = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute",
                              json={"code": f"raise ValueError('v' * {huge})"}, timeout=120)
    assert answer.status_code == 200, answer.text
    execution = answer.json()
    assert execution["status"] == "failed"
    error = execution["error"]
    assert error["ename"] == "ValueError"
    assert error["evalue"].startswith("v" * 1000)
    assert error["evalue"].endswith(f"[evalue truncated: {huge - MAX_REPLY_TEXT} more characters]")
    assert sum(len(line) + 1 for line in error["traceback"]) <= MAX_REPLY_TEXT + 100
    assert error["traceback"][-1].startswith("[traceback truncated: ")
    (output,) = [o for o in execution["outputs"] if o["output_type"] == "error"]
    assert len(output["evalue"]) == huge  # (the output itself, as the output caps allow)
    # Stored as answered.
    stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
    assert stored["error"] == error
