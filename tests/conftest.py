"""Fixtures: real gateways on loopback, clients per user, and a ready sandbox."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.gateways import InProcessGateway

#: postgres_server, postgres_url: a real PostgreSQL 15 (deploy/host/ensure-postgres.sh).
pytest_plugins = ["tests.postgres"]

#: Each test's reports by phase ("setup", "call", "teardown"): a fixture's teardown can tell
#: whether its test failed (``failed(request)``) and leave what explains it in the report.
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test of ``request`` failed (asked in a fixture's teardown)."""
    return any(report.failed for report in request.node.stash.get(REPORTS, {}).values())


@pytest.fixture
async def gateway(tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    """An in-process gateway with the local provisioner and users alice, bob and admin."""
    async with InProcessGateway(tmp_path / "data") as running:
        yield running


@pytest.fixture
async def alice(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("alice") as client:
        yield client


@pytest.fixture
async def bob(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("bob") as client:
        yield client


@pytest.fixture
async def sandbox(alice: httpx.AsyncClient) -> dict[str, Any]:
    """A running sandbox of alice's (the gateway stops it at teardown)."""
    response = await alice.post("/api/v1/sandboxes", json={})
    assert response.status_code == 201, response.text
    return response.json()


# -- Docker ------------------------------------------------------------------------------------


def docker_or_fail() -> Any:
    """A docker SDK client for the engine the gateway will use; fails the test (never skips) without one."""
    import docker

    from gateway.provisioners.docker import default_image

    try:
        # A busy engine (parallel workers, a fork bomb next door) may take over 10 s for `top` or `stats`.
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine answers ({exc}); container tests need one: run `make test` "
                    "(it installs and starts Docker) or `bash deploy/host/ensure-docker.sh`", pytrace=False)
    try:
        client.images.get(default_image())
    except docker.errors.ImageNotFound:
        client.close()
        pytest.fail(f"the sandbox image {default_image()} is missing: build it with `make images`", pytrace=False)
    return client


@pytest.fixture
def docker_client() -> Any:
    """A docker SDK client (the test fails if no engine answers or the sandbox image is missing)."""
    client = docker_or_fail()
    yield client
    client.close()


@pytest.fixture
async def docker_gateway(tmp_path: Any, docker_client: Any) -> AsyncIterator[InProcessGateway]:
    """An in-process gateway whose sandboxes are Docker containers; users alice, bob and admin."""
    async with InProcessGateway(tmp_path / "data", provisioner="docker") as running:
        yield running


# -- Order -------------------------------------------------------------------------------------

#: Long tests that cannot be split (one build serves all their steps): they go first, so the other
#: xdist workers get on with the rest instead of idling while one of these runs at the end.
LONG_SETUP_FIRST = ("tests/test_packaging.py", "tests/deploy/test_compose.py", "tests/e2e/test_fuzz.py",
                    "tests/e2e/test_gvisor_features.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_SETUP_FIRST))  # (a stable sort)


# -- Diagnostics -------------------------------------------------------------------------------

HANG_REPORT_AFTER = 150.0  # seconds; pytest-timeout fails the test later (setup.cfg)


@pytest.fixture(autouse=True)
async def report_hangs() -> AsyncIterator[None]:
    """If a test is still running after HANG_REPORT_AFTER s, print every asyncio task's stack.

    A hung await leaves the loop idle in epoll, where a thread dump shows nothing useful; the
    tasks' coroutine stacks say what each one waits for.
    """
    import sys
    import threading

    loop = asyncio.get_running_loop()

    def dump() -> None:
        print(f"\n=== still running after {HANG_REPORT_AFTER:g} s; asyncio tasks: ===", file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=sys.stderr)

    timer = threading.Timer(HANG_REPORT_AFTER, lambda: loop.call_soon_threadsafe(dump))
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage as each test ends, so a ResourceWarning (something left open) is reported
    for the test that left it, not for whichever test happens to run when the collector does."""
    yield
    gc.collect()
