"""Shutdown always finishes, whatever is under way, and leaves no kernel behind.

Each case stops a real gateway (local processes, then Docker containers) at a moment when work
is in flight: the warm pool starting a kernel, a create waiting for its kernel, an execution
running. The bound is far above a normal shutdown (seconds); it only tells a hang from an end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import GatewayApp
from gateway.provisioners.docker import LABEL_INSTANCE
from gateway.sandboxes.model import ResourceLimits, Sandbox
from gateway.sandboxes.pool import WarmPool
from gateway.store.sqlite import SQLiteStore
from tests.api.test_pool import NEVER_SATURATED
from tests.conftest import docker_or_fail
from tests.gateways import create
from tests.provisioned import PROVISIONERS, containers_labelled, gateway_for
from tests.waiting import until

SHUTDOWN_BOUND = 90.0  # seconds; a hang shows as a TimeoutError here, not as the test's timeout


async def listed(client: httpx.AsyncClient, url: str, status: str) -> bool:
    """Whether the list at ``url`` (sandboxes or executions) has an item in ``status``."""
    body = (await client.get(url)).json()
    items = body.get("sandboxes", body.get("executions", []))
    return any(item["status"] == status for item in items)


class Leftovers:
    """What a gateway's kernels could leave behind: processes (local) or containers (docker)."""

    def __init__(self, app: GatewayApp) -> None:
        self.runtime_dir = app.launcher.runtime_dir
        self.instance = app.launcher.engine.instance_id if app.launcher.engine is not None else None

    def processes(self) -> list[str]:
        """Processes whose command line names this gateway's runtime dir (local kernels' connection files)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.runtime_dir) in cmdline and int(pid) != os.getpid():
                found.append(f"{pid}: {cmdline}")
        return found

    def containers(self, docker_client: Any) -> list[str]:
        if self.instance is None:
            return []
        return [f"{c.name} ({c.status})" for c in containers_labelled(docker_client, f"{LABEL_INSTANCE}={self.instance}")]

    def assert_none(self, docker_client: Any) -> None:
        assert self.processes() == []
        assert self.containers(docker_client) == []
        assert not self.runtime_dir.exists(), f"{self.runtime_dir} is left: {sorted(os.listdir(self.runtime_dir))}"


@pytest.fixture
def engine(provisioner: str) -> Iterator[Any]:
    """A docker client for the docker variants (they fail loudly without an engine), else None."""
    if provisioner != "docker":
        yield None
        return
    client = docker_or_fail()
    yield client
    client.close()


async def shut_down(app: GatewayApp) -> None:
    async with asyncio.timeout(SHUTDOWN_BOUND):
        await app.shutdown()


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_shutdown_while_the_pool_starts_a_kernel(provisioner: str, tmp_path: Path, engine: Any) -> None:
    async with gateway_for(provisioner, tmp_path, "--pool-size=1", NEVER_SATURATED) as gateway:
        app = gateway.app
        await until(lambda: app.sandboxes.pool.starting, what="the pool to begin a start", timeout=120)
        leftovers = Leftovers(app)
        await shut_down(app)
        assert not app.sandboxes.pool.starting
    leftovers.assert_none(engine)


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_shutdown_while_a_create_waits_for_its_kernel(provisioner: str, tmp_path: Path, engine: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        app = gateway.app
        creating = asyncio.create_task(alice.post("/api/v1/sandboxes", json={}))
        await until(lambda: listed(alice, "/api/v1/sandboxes", "creating"), what="the create to begin")
        leftovers = Leftovers(app)
        await shut_down(app)
        response = await creating
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "shutting_down"
    leftovers.assert_none(engine)
    records = await stored_sandboxes(tmp_path)
    assert [(r["status"], r["status_reason"]) for r in records] == [("terminated", "gateway_shutdown")]


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_shutdown_while_an_execution_runs(provisioner: str, tmp_path: Path, engine: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        app = gateway.app
        sandbox = await create(alice)
        executions = f"/api/v1/sandboxes/{sandbox['id']}/executions"
        running = asyncio.create_task(
            alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": "import time; time.sleep(600)"})
        )
        await until(lambda: listed(alice, executions, "running"), what="the execution to begin")
        leftovers = Leftovers(app)
        await shut_down(app)
        response = await running
        assert response.status_code == 200, response.text
        execution = response.json()
        assert execution["status"] == "failed" and execution["error"]["code"] == "gateway_shutdown", execution
    leftovers.assert_none(engine)
    # What the client was told is what the store keeps.
    store = SQLiteStore(str(tmp_path / "data" / "gateway.db"))
    await store.open()
    try:
        record = await store.get_execution(execution["id"])
    finally:
        await store.close()
    assert record is not None and record["status"] == "failed", record
    assert [(r["status"], r["status_reason"]) for r in await stored_sandboxes(tmp_path)] == [
        ("terminated", "gateway_shutdown")]


async def stored_sandboxes(tmp_path: Path) -> list[dict[str, Any]]:
    store = SQLiteStore(str(tmp_path / "data" / "gateway.db"))
    await store.open()
    try:
        return await store.list_sandboxes()
    finally:
        await store.close()


async def test_shutdown_twice_is_harmless(tmp_path: Path) -> None:
    async with gateway_for("local", tmp_path) as gateway:
        await shut_down(gateway.app)
        await shut_down(gateway.app)
    with pytest.raises(httpx.ConnectError):
        async with gateway.client("alice") as alice:
            await alice.get("/api/v1/sandboxes")


# -- the pool's stop, around a start whose cancellation is lost -----------------------------------


async def test_pool_stop_ends_even_when_a_start_swallows_its_cancellation() -> None:
    """Python 3.11's wait_for can lose a cancellation that races its inner await's end: the start
    then returns normally. The refill loop must end anyway and dispose of what it got."""
    started = asyncio.Event()
    finish = asyncio.Event()
    disposed: list[Any] = []
    sandbox = Sandbox(owner="", resources=ResourceLimits(), provisioner="local")

    async def start() -> Any:
        started.set()
        try:
            await finish.wait()
        except asyncio.CancelledError:
            pass  # what wait_for does when the inner await finished at the same moment
        return (sandbox, "runtime")

    async def dispose(pooled: Any) -> None:
        disposed.append(pooled)

    pool = WarmPool(start=start, dispose=dispose, saturated=lambda: None, profile=ResourceLimits(), size=1)
    pool.start()
    await started.wait()
    async with asyncio.timeout(10):
        await pool.stop()
    assert disposed == [(sandbox, "runtime")]
    assert pool.describe()["ready"] == 0
