"""One real gateway for the E2B tests, driven by the real ``e2b`` and ``e2b-code-interpreter`` SDKs.

``code-gateway`` runs as a child process with Docker sandboxes (the blocking SDK cannot share the
test's event loop), once per test session. The SDK is configured exactly as a user configures
it: ``E2B_API_URL``, ``E2B_SANDBOX_URL`` and ``E2B_API_KEY`` (alice's) in the environment; bob's
key is passed as ``api_key=`` where a test needs a second user.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.conftest import docker_or_fail
from tests.gateways import KEY_PAIRS, KEYS, GatewayProcess

#: The E2B tests' gateway takes files of at most this size (E2B's own limit is larger; ours is set).
MAX_FILE_BYTES = 4 << 20
#: Its send buffer (``--max-send-buffer-bytes``): small, so a client that does not read is cut off
#: within one execution's output (at most 10 MiB).
MAX_SEND_BUFFER = 1 << 20
E2B_KEYS = {"alice": "e2b_" + "a1" * 20, "bob": "e2b_" + "b2" * 20}


def e2b_gateway_process(data_dir: Path, *args: str) -> GatewayProcess:
    """A started E2B tests' gateway (docker sandboxes, alice's and bob's E2B keys), with ``args``."""
    docker_or_fail().close()
    keys = ",".join([KEY_PAIRS, *(f"{user}:{key}" for user, key in E2B_KEYS.items())])
    gateway = GatewayProcess(data_dir, f"--max-file-bytes={MAX_FILE_BYTES}",
                             f"--max-send-buffer-bytes={MAX_SEND_BUFFER}", *args,
                             provisioner="docker", env={"GATEWAY_API_KEYS": keys})
    asyncio.run(gateway.start())
    return gateway


@pytest.fixture(scope="session")
def e2b_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = e2b_gateway_process(tmp_path_factory.mktemp("e2b-gateway"))
    saved = {name: os.environ.get(name) for name in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    os.environ.update(E2B_API_URL=f"{gateway.url}/e2b", E2B_SANDBOX_URL=f"{gateway.url}/e2b/sandbox",
                      E2B_API_KEY=E2B_KEYS["alice"])
    yield gateway
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    asyncio.run(gateway.stop())


@pytest.fixture(scope="session")
def e2b_gvisor_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A second such gateway, whose sandboxes run under gVisor (reached with ``gateway_options``)."""
    gateway = e2b_gateway_process(tmp_path_factory.mktemp("e2b-gvisor-gateway"), "--runtime=gvisor")
    yield gateway
    asyncio.run(gateway.stop())


def gateway_options(gateway: GatewayProcess) -> dict[str, str]:
    """The SDK's options (``Sandbox.create(**...)``) for alice on ``gateway`` rather than the default one."""
    return {"api_url": f"{gateway.url}/e2b", "sandbox_url": f"{gateway.url}/e2b/sandbox", "api_key": E2B_KEYS["alice"]}


def envd_headers(sandbox: Sandbox | AsyncSandbox) -> dict[str, str]:
    """What the SDK sends with a request to a sandbox's envd (for requests it would not make)."""
    return {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983",
            "X-Access-Token": sandbox._envd_access_token or ""}


@pytest.fixture
def ours(e2b_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """alice on our own REST API (Bearer key), for what the E2B API does not show."""
    with httpx.Client(base_url=e2b_gateway.url, headers={"Authorization": f"Bearer {KEYS['alice']}"},
                      timeout=120) as client:
        yield client


@pytest.fixture
async def async_sandbox(e2b_gateway: GatewayProcess) -> AsyncIterator[AsyncSandbox]:
    """A code-interpreter-v1 sandbox of alice's through the async SDK, killed at teardown."""
    created = await AsyncSandbox.create(timeout=300)
    yield created
    await created.kill()
