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
