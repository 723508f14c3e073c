"""History retention (``--history-retention``), on SQLite and a real PostgreSQL: a real gateway forgets a
deleted sandbox and its executions once the retention has passed (404, as for an id never seen), and keeps
every live and paused sandbox with all of it; replicas sharing a store all prune, safely; 30 days by
default, 0 keeps everything, a bad value stops the start with a message naming the option."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from traitlets import TraitError

from gateway.sandboxes.history import HistoryRetention
from gateway.store.sql import SQLStore
from tests.gateways import InProcessGateway, create, run
from tests.store.test_history import put, sandbox
from tests.stores import BACKENDS, Backend, backend_for
from tests.waiting import until


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, request, tmp_path) as chosen:
        yield chosen


async def not_found(client: httpx.AsyncClient, path: str) -> str:
    """The error code of a 404 for ``path`` (the test fails on any other answer)."""
    response = await client.get(path)
    assert response.status_code == 404, (path, response.status_code, response.text)
    return str(response.json()["error"]["code"])


async def test_a_deleted_sandboxs_history_is_forgotten_after_the_retention_and_live_ones_are_kept(
        backend: Backend, tmp_path: Path) -> None:
    async with InProcessGateway(tmp_path / "data", *backend.gateway_args(), "--history-retention=1") as gateway, \
            gateway.client("alice") as alice, gateway.client("admin") as admin:
        live, paused, ended = [(await create(alice))["id"] for _ in range(3)]
        kept = await run(alice, live, "x = 41; print('kept')")
        await run(alice, paused, "y = 'saved'")
        gone = await run(alice, ended, "print('bye')")
        assert (await alice.post(f"/api/v1/sandboxes/{paused}/pause")).status_code == 200
        assert (await alice.get(f"/api/v1/executions/{gone['id']}")).status_code == 200
        assert (await alice.delete(f"/api/v1/sandboxes/{ended}")).status_code == 204

        await until(lambda: alice.get(f"/api/v1/sandboxes/{ended}"), lambda r: r.status_code == 404,
                    what="the ended sandbox to be forgotten")
        # Everything of it answers as an id never seen does.
        unknown = str(uuid.uuid4())
        for path, code in ((f"/api/v1/sandboxes/{{}}", "sandbox_not_found"),
                           (f"/api/v1/sandboxes/{{}}/executions", "sandbox_not_found"),
                           (f"/api/v1/sandboxes/{{}}/notebook", "sandbox_not_found")):
            assert await not_found(alice, path.format(ended)) == code
            assert await not_found(alice, path.format(unknown)) == code
        assert await not_found(alice, f"/api/v1/executions/{gone['id']}") == "execution_not_found"
        assert await not_found(admin, f"/api/v1/executions/{gone['id']}") == "execution_not_found"
        for client in (alice, admin):
            listed = (await client.get("/api/v1/sandboxes")).json()
            assert [s["id"] for s in listed["sandboxes"]] == [live, paused] and listed["total"] == 2
            assert (await client.get("/api/v1/sandboxes?status=terminated")).json()["sandboxes"] == []
        assert await gateway.app.store.list_executions(ended) == []

        # The live and the paused sandbox, older than the retention by now, keep all of theirs.
        assert (await alice.get(f"/api/v1/sandboxes/{live}")).json()["status"] == "running"
        again = (await alice.get(f"/api/v1/executions/{kept['id']}")).json()
        assert again["status"] == "completed" and again["stdout"] == "kept\n"
        history = (await alice.get(f"/api/v1/sandboxes/{live}/executions")).json()["executions"]
        assert [e["id"] for e in history] == [kept["id"]]
        assert (await run(alice, live, "x + 1"))["result"]["text/plain"] == "42"
        assert (await alice.get(f"/api/v1/sandboxes/{paused}")).json()["status"] == "paused"
        assert (Path(gateway.app.data_dir) / "paused" / paused).is_dir()
        assert (await alice.post(f"/api/v1/sandboxes/{paused}/resume")).status_code == 200
        assert (await run(alice, paused, "y"))["result"]["text/plain"] == "'saved'"
        assert len((await alice.get(f"/api/v1/sandboxes/{paused}/executions")).json()["executions"]) == 2


async def test_replicas_sharing_a_store_all_prune_and_each_ended_sandbox_goes_once(
        tmp_path: Path, postgres_url: str) -> None:
    args = (f"--store-url={postgres_url}", "--lease-timeout=5", "--history-retention=1")
    async with InProcessGateway(tmp_path / "a", *args) as a, InProcessGateway(tmp_path / "b", *args) as b, \
            a.client() as on_a, b.client() as on_b:
        live = (await create(on_a))["id"]  # held by replica a
        kept = await run(on_b, live, "x = 41")  # (forwarded to a)
        ended = []
        for client in (on_a, on_b, on_a):
            sid = (await create(client))["id"]
            ended.append((sid, (await run(client, sid, "1 + 1"))["id"]))
            assert (await client.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204

        async def listed(client: httpx.AsyncClient) -> list[str]:
            return [s["id"] for s in (await client.get("/api/v1/sandboxes")).json()["sandboxes"]]

        for client in (on_a, on_b):
            assert await until(lambda: listed(client), lambda ids: ids == [live],
                               what="only the live sandbox listed")
            for sid, eid in ended:
                assert await not_found(client, f"/api/v1/sandboxes/{sid}") == "sandbox_not_found"
                assert await not_found(client, f"/api/v1/executions/{eid}") == "execution_not_found"
        for replica in (a, b):
            assert replica.app.store.problem is None
        assert (await on_b.get(f"/api/v1/executions/{kept['id']}")).json()["status"] == "completed"
        assert (await run(on_b, live, "x + 1"))["result"]["text/plain"] == "42"


async def open_store(backend: Backend) -> SQLStore:
    store = backend.store()
    await store.open()
    return store


async def test_thirty_days_by_default_and_zero_keeps_everything(backend: Backend) -> None:
    store = await open_store(backend)
    try:
        old = await put(store, sandbox("old", ended_days_ago=31))
        await put(store, sandbox("recent", ended_days_ago=29))
        forever = HistoryRetention(store=store, retention=0)
        forever.start()  # (no task: nothing to prune, ever)
        assert await forever.prune() == 0
        await forever.stop()
        assert [e["id"] for e in await store.list_executions("old")] == old

        default = HistoryRetention(store=store)
        assert default.retention == 30 * 86400
        assert await default.prune() == 1
        assert [r["id"] for r in await store.list_sandboxes()] == ["recent"]
        assert await store.list_executions("old") == []
    finally:
        await store.close()


async def test_a_negative_retention_stops_the_start_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(TraitError, match="--history-retention: seconds, 0 or more"):
        async with InProcessGateway(tmp_path / "data", "--history-retention=-1"):
            pass
    finished = subprocess.run([sys.executable, "-m", "gateway", "--history-retention=-5", "--port=0",
                               f"--data-dir={tmp_path / 'cli'}"], capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0
    assert "code-gateway: --history-retention: seconds, 0 or more (0 keeps history for ever), not -5" \
        in finished.stderr, finished.stderr
