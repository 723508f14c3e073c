"""One real gateway for every client test: ``code-gateway`` as a child process with Docker sandboxes.

The clients reach it over loopback HTTP exactly as a user would (the blocking SDK, the command
line and the browser cannot share the test's own event loop). It is started once per test
session, since each client test only creates (and deletes) sandboxes in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import docker_or_fail
from tests.gateways import KEYS, GatewayProcess


@pytest.fixture(scope="session")
def client_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    docker_or_fail().close()
    gateway = GatewayProcess(tmp_path_factory.mktemp("client-gateway"), provisioner="docker")
    asyncio.run(gateway.start())
    yield gateway
    asyncio.run(gateway.stop())


@pytest.fixture
def alice_key() -> str:
    return KEYS["alice"]
