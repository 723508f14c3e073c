"""Fixtures: real gateways on loopback, clients per user, and a ready sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateways import InProcessGateway


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
        client = docker.from_env(timeout=10)
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
