"""deploy/compose for real: docker-compose brings up PostgreSQL and two gateway replicas on this
machine's Docker engine, and clients use them.

The images are this checkout's (``deploy/image/build.sh``: the gateway, and a local stand-in for
the official postgres:15 image running Debian's PostgreSQL 15, as no registry is reachable here);
they are rebuilt only when their inputs change. The replicas share the database (what one wrote,
the other reads), each runs its sandboxes on the tcp transport from inside its container, and
stopping the project leaves no sandbox container behind (the replicas stopping together hand their
sandboxes to each other, and the last one ends them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateways import create, run
from tests.postgres import free_port
from tests.provisioned import containers_labelled
from tests.waiting import until

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose" / "compose.yaml"
KEY = "alice-" + uuid.uuid4().hex


def build(what: str) -> str:
    done = subprocess.run(["bash", str(ROOT / "deploy" / "image" / "build.sh"), what], check=True,
                          capture_output=True, text=True, timeout=900)
    return done.stdout.strip().splitlines()[-1]


class Project:
    def __init__(self) -> None:
        compose = shutil.which("docker-compose")
        assert compose, "docker-compose is missing: run `bash deploy/host/ensure-compose.sh` (make test does)"
        self.name = "cgtest" + uuid.uuid4().hex[:8]
        self.ports = {"POSTGRES_PORT": free_port(), "GATEWAY_1_PORT": free_port(), "GATEWAY_2_PORT": free_port()}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "POSTGRES_PASSWORD": uuid.uuid4().hex, "GATEWAY_API_KEYS": f"alice:{KEY}",
                    "GATEWAY_IMAGE": build("gateway"), "POSTGRES_IMAGE": build("postgres"),
                    "GATEWAY_IP": "127.0.0.1", "GATEWAY_POOL_SIZE": "0", "INSTANCE_PREFIX": self.name}
        self.argv = [compose, "--project-name", self.name, "--file", str(COMPOSE_FILE)]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.ports[f'GATEWAY_{replica}_PORT']}"

    def containers(self, docker_client: Any, replica: int) -> list[Any]:
        label = f"code-gateway.instance={self.name}-{replica}"
        return containers_labelled(docker_client, label)


@pytest.fixture
def project(docker_client: Any) -> Iterator[Project]:
    running = Project()
    try:
        running("up", "-d")
        yield running
    finally:
        logs = running("logs", "--no-color", "--tail", "40")
        running("down", "--volumes", "--timeout", "30")
        print(logs)


@pytest.fixture
async def replicas(project: Project) -> AsyncIterator[list[httpx.AsyncClient]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=project.url(1), headers=headers, timeout=60) as one, \
            httpx.AsyncClient(base_url=project.url(2), headers=headers, timeout=60) as two:
        for client in (one, two):
            async def ready(client: httpx.AsyncClient = client) -> int:
                try:
                    return (await client.get("/ready")).status_code
                except httpx.TransportError:
                    return 0
            await until(ready, lambda status: status == 200, what=f"{client.base_url} to be ready", timeout=180)
        yield [one, two]


async def test_two_replicas_share_postgresql_and_run_sandboxes_over_tcp(
        project: Project, replicas: list[httpx.AsyncClient], docker_client: Any) -> None:
    one, two = replicas
    health = [(await client.get("/health")).json() for client in replicas]
    for replica, facts in enumerate(health, start=1):
        assert facts["store"]["kind"] == "postgresql" and facts["store"]["available"], facts
        assert facts["provisioner"] == "docker" and facts["engine"]["transport"] == "tcp", facts
        assert facts["engine"]["kernel_network"]["host_firewall"] is True  # set from inside the container
        assert facts["engine"]["instance"] == f"{project.name}-{replica}"

    first = (await create(one))["id"]
    second = (await create(two))["id"]
    assert (await run(one, first, "x = 41"))["status"] == "completed"
    assert (await run(two, second, "x = 1"))["status"] == "completed"
    answered = await run(one, first, "x + 1")
    assert answered["result"] == {"text/plain": "42"}
    assert (await run(two, second, "x + 1"))["result"] == {"text/plain": "2"}  # each its own kernel

    # One database: what one replica wrote, the other reads.
    seen = (await two.get(f"/api/v1/sandboxes/{first}")).json()
    assert seen["id"] == first and seen["status"] == "running" and seen["owner"] == "alice"
    execution = (await two.get(f"/api/v1/executions/{answered['id']}")).json()
    assert execution["result"] == {"text/plain": "42"}
    listed = (await one.get("/api/v1/sandboxes")).json()
    assert {s["id"] for s in listed["sandboxes"]} == {first, second}

    # Each replica's sandboxes are its own containers, on the kernel network only.
    for replica, sid in ((1, first), (2, second)):
        [container] = project.containers(docker_client, replica)
        assert container.name == f"code-gateway-{sid}"
        assert list(container.attrs["NetworkSettings"]["Networks"]) == ["code-gateway-kernels"]

    project("stop", "--timeout", "30", "gateway-1", "gateway-2")
    assert project.containers(docker_client, 1) == project.containers(docker_client, 2) == []
