"""The gateway image run as deploy/kubernetes's Deployment runs it, against the Kubernetes STAND-IN.

The container gets the Deployment's image build (``deploy/image/build.sh gateway``), arguments,
environment (the Secret's store URL pointing at a real PostgreSQL here), user, read-only root,
dropped capabilities and writable emptyDirs; it reaches the stand-in's API (``tests.kubernetes_stand_in``:
HTTP, and each pod run as a Docker container) through a kubeconfig, as a gateway outside the
cluster would — the service-account path needs a real cluster. It creates a sandbox pod and runs
code in it over CurveZMQ; stopped (``--keep-sandboxes``, as the Deployment says), it leaves the pod,
and its successor (``Recreate``, the same fixed instance id) re-attaches it with its state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.manifests import Objects, container_env, gateway_container, rendered
from tests.deploy.test_compose import build
from tests.gateways import create, run
from tests.kubernetes_stand_in import KubernetesStandIn
from tests.postgres import free_port
from tests.waiting import until

pytestmark = pytest.mark.docker

KEY = "alice-" + uuid.uuid4().hex
NAMESPACE = "code-gateway-sandboxes"


@pytest.fixture
async def cluster(tmp_path: Any, docker_client: Any) -> AsyncIterator[KubernetesStandIn]:
    async with KubernetesStandIn(docker_client, tmp_path) as running:
        yield running


class GatewayPod:
    """The Deployment's gateway container, run by Docker in the host's network namespace."""

    def __init__(self, docker_client: Any, objects: Objects, kubeconfig: Path, store_url: str) -> None:
        self.docker = docker_client
        self.image = build("gateway")
        self.port = free_port()
        container = gateway_container(objects)
        pod = objects[("Deployment", "code-gateway", "code-gateway")]["spec"]["template"]["spec"]
        self.env = {**container_env(objects, {"store-url": store_url, "api-keys": f"alice:{KEY}"}, {}),
                    "GATEWAY_KUBERNETESPROVISIONER__KUBECONFIG": "/etc/code-gateway/kubeconfig"}
        # Loopback only here (the Deployment listens on all addresses of its own pod).
        self.args = [arg for arg in container["args"] if not arg.startswith(("--ip=", "--port="))]
        assert len(self.args) == len(container["args"]) - 2
        self.args += ["--ip=127.0.0.1", f"--port={self.port}"]
        context = {**pod["securityContext"], **container["securityContext"]}
        self.user = f"{context['runAsUser']}:{context['runAsGroup']}"
        assert context["readOnlyRootFilesystem"] and container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        self.tmpfs = {mount["mountPath"]: "mode=1777" for mount in container["volumeMounts"]}
        self.kubeconfig = kubeconfig
        self.container: Any = None

    def start(self) -> None:
        self.container = self.docker.containers.run(
            self.image, self.args, environment=self.env, user=self.user, read_only=True, tmpfs=self.tmpfs,
            cap_drop=["ALL"], security_opt=["no-new-privileges"], network_mode="host", detach=True,
            volumes={str(self.kubeconfig): {"bind": "/etc/code-gateway/kubeconfig", "mode": "ro"}},
            labels={"code-gateway.test": "kubernetes-image"})

    def stop(self) -> None:
        self.container.stop(timeout=30)

    def remove(self) -> None:
        if self.container is not None:
            self.container.remove(force=True)

    def logs(self) -> str:
        return str(self.container.logs(tail=40).decode(errors="replace"))


async def ready(gateway: GatewayPod) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as client:
        async def status() -> int:
            gateway.container.reload()
            assert gateway.container.status in ("created", "running"), gateway.logs()
            try:
                return (await client.get("/ready")).status_code
            except httpx.TransportError:
                return 0
        await until(status, lambda code: code == 200, what="the gateway container to be ready", timeout=180)


async def test_the_deployments_gateway_container_runs_sandboxes_as_pods_and_its_successor_reattaches(
        cluster: KubernetesStandIn, docker_client: Any, postgres_url: str) -> None:
    objects = rendered()
    first = GatewayPod(docker_client, objects, cluster.kubeconfig, postgres_url)
    second = GatewayPod(docker_client, objects, cluster.kubeconfig, postgres_url)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        first.start()
        await ready(first)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}", headers=headers, timeout=60) as alice:
            health = (await alice.get("/health")).json()
            assert health["provisioner"] == "kubernetes" and health["store"]["kind"] == "postgresql", health
            assert health["engine"]["instance"] == "code-gateway-0" and health["engine"]["namespace"] == NAMESPACE
            sid = (await create(alice))["id"]
            assert (await run(alice, sid, "x = 41"))["status"] == "completed"
            assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
        [posted] = cluster.created
        assert posted["metadata"]["labels"]["code-gateway.instance"] == "code-gateway-0"
        assert posted["spec"]["containers"][0]["image"] == first.env["GATEWAY_KUBERNETESPROVISIONER__IMAGE"]

        first.stop()  # as Recreate stops it: --keep-sandboxes leaves the pod running
        assert list(cluster.pods) == [(NAMESPACE, f"code-gateway-{sid}")]
        second.start()
        await ready(second)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}", headers=headers, timeout=60) as alice:
            assert (await run(alice, sid, "x"))["result"] == {"text/plain": "41"}  # the same kernel
        assert len(cluster.created) == 1
    finally:
        first.remove()
        second.remove()
