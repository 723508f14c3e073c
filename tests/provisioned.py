"""Gateways for tests that must hold for every provisioner: ``local`` and ``docker``.

    from tests.provisioned import each_gateway, alice, bob  # noqa: F401  (fixtures)

    async def test_something(each_gateway, alice): ...    # runs once per provisioner

The docker variant carries the ``docker`` mark and fails loudly (never skips) without an engine
or the sandbox image, as every container test does. A module whose tests are all about
containers makes ``gateway`` (and so ``alice``, ``bob`` and ``sandbox`` of tests/conftest.py) a
docker one::

    from tests.provisioned import docker_as_the_gateway  # noqa: F401  (fixture: gateway)

Containment and security tests hold for both runtimes a docker sandbox may run under (runc and
gVisor): a module importing ``docker_gateway_of_each_runtime`` runs each test using
``docker_gateway`` (or ``gateway``, ``alice``...) once per runtime, the ``runtime`` fixture
naming which::

    from tests.provisioned import docker_as_the_gateway, docker_gateway_of_each_runtime  # noqa: F401

A test that needs other gateway options::

    @pytest.mark.parametrize("provisioner", PROVISIONERS)
    async def test_limit(provisioner, tmp_path):
        async with gateway_for(provisioner, tmp_path, "--SandboxFiles.max_file_bytes=1024") as gateway: ...
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.provisioners.docker import DockerEngine, container_name
from tests.conftest import docker_or_fail
from tests.gateways import InProcessGateway, create, run  # noqa: F401  (re-exported for the tests using these fixtures)

PROVISIONERS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
#: The isolations of docker sandboxes (``--runtime``); CI registers runsc (ensure-docker.sh --runsc).
RUNTIMES = ["runc", "gvisor"]
#: What a sandbox may be: a local process, a container under runc, or one under gVisor.
SANDBOX_KINDS = ["local", pytest.param("docker", marks=pytest.mark.docker),
                 pytest.param("gvisor", marks=pytest.mark.docker)]


def gateway_for(provisioner: str, tmp_path: Any, *args: str) -> InProcessGateway:
    """A gateway (to use with ``async with``) whose sandboxes run on ``provisioner``."""
    if provisioner == "docker":
        docker_or_fail().close()
    return InProcessGateway(tmp_path / "data", *args, provisioner=provisioner)


def gateway_of_kind(kind: str, tmp_path: Any, *args: str) -> InProcessGateway:
    """``gateway_for`` a kind of ``SANDBOX_KINDS`` (gvisor: docker, ``--runtime=gvisor``)."""
    if kind == "gvisor":
        return gateway_for("docker", tmp_path, "--runtime=gvisor", *args)
    return gateway_for(kind, tmp_path, *args)


@pytest.fixture(params=PROVISIONERS)
async def each_gateway(request: Any, tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    """An in-process gateway with the provisioner of this run (users alice, bob and admin)."""
    async with gateway_for(request.param, tmp_path) as running:
        yield running


@pytest.fixture
async def alice(each_gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with each_gateway.client("alice") as client:
        yield client


@pytest.fixture
async def bob(each_gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with each_gateway.client("bob") as client:
        yield client




@pytest.fixture(params=RUNTIMES)
def runtime(request: Any) -> str:
    """The runtime docker sandboxes of this run use: runc, then gvisor."""
    return str(request.param)


@pytest.fixture(name="docker_gateway")
async def docker_gateway_of_each_runtime(tmp_path: Any, docker_client: Any,
                                         runtime: str) -> AsyncIterator[InProcessGateway]:
    """``docker_gateway`` whose sandboxes run under ``runtime`` (its default, ``--runtime``)."""
    async with InProcessGateway(tmp_path / "data", f"--runtime={runtime}", provisioner="docker") as running:
        yield running


@pytest.fixture(name="gateway")
async def docker_as_the_gateway(docker_gateway: InProcessGateway) -> InProcessGateway:
    """In a module that imports it, ``gateway`` is ``docker_gateway``: the users' clients reach containers."""
    return docker_gateway


# -- the engine's side of docker sandboxes -----------------------------------------------------


def container_of(docker_client: Any, sandbox_id: str) -> Any:
    return docker_client.containers.get(container_name(sandbox_id))


def gvisor_processes(docker_client: Any, sandbox_id: str) -> int:
    """How many processes a gVisor sandbox's own kernel has, as ``runsc ps`` reads it from the host.

    The container's init on the host is the Sentry (``runsc-sandbox --root=<state dir> ...``): its
    state directory is where runsc finds the container.
    """
    container = container_of(docker_client, sandbox_id)
    arguments = Path(f"/proc/{container.attrs['State']['Pid']}/cmdline").read_bytes().decode().split("\0")
    assert arguments[0] == "runsc-sandbox", arguments[:2]
    root = next(argument.split("=", 1)[1] for argument in arguments if argument.startswith("--root="))
    listed = subprocess.run(["runsc", f"--root={root}", "ps", "--format=json", container.id],
                            capture_output=True, text=True, check=True, timeout=30)
    return len(json.loads(listed.stdout))


def containers_labelled(docker_client: Any, label: str) -> list[Any]:
    # ignore_removed: one removed between the engine's list and the SDK's inspect of it is gone, not an error.
    return docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def engine_of(gateway: InProcessGateway) -> DockerEngine:
    engine = gateway.app.launcher.engine
    assert isinstance(engine, DockerEngine)
    return engine
