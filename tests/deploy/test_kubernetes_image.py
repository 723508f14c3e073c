"""The gateway image run as deploy/kubernetes's Deployment runs it, against the Kubernetes STAND-IN.

The container gets the Deployment's image build (``deploy/image/build.sh gateway``), arguments,
environment (the Secret's store URL pointing at a real PostgreSQL here), user, read-only root,
dropped capabilities and writable emptyDirs; it reaches the stand-in's API (``tests.kubernetes_stand_in``:
HTTP, and each pod run as a Docker container) through a kubeconfig, as a gateway outside the
cluster would — the service-account path needs a real cluster. Each such "pod" gets its own pod
name (its replica id, from the downward API as the Deployment says) and pod IP (loopback here).
As a rolling update does it: the first creates a sandbox pod and runs code in it over CurveZMQ; a
second (another pod name) starts on the same store and serves that sandbox by forwarding to the
first at its GATEWAY_REPLICA_ADDRESS; the first is stopped (SIGTERM, as the kubelet stops it)
and hands the sandbox over, leaving its pod; the second takes it over, the same pod with its
state, and creates none.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.manifests import Objects, container_env, gateway_container, rendered
from tests.deploy.test_compose import build
from tests.e2e.test_scale_out import lease_holder
from tests.gateways import create, run, without_pool_unless_asked
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

    def __init__(self, docker_client: Any, objects: Objects, kubeconfig: Path, store_url: str, name: str) -> None:
        self.docker = docker_client
        self.image = build("gateway")
        self.port = free_port()
        self.name = name
        container = gateway_container(objects)
        pod = objects[("Deployment", "code-gateway", "code-gateway")]["spec"]["template"]["spec"]
        fields = {"metadata.name": name, "status.podIP": "127.0.0.1"}
        self.env = {**container_env(objects, {"store-url": store_url, "api-keys": f"alice:{KEY}"}, fields),
                    "GATEWAY_KUBERNETESPROVISIONER__KUBECONFIG": "/etc/code-gateway/kubeconfig"}
        assert self.env["GATEWAY_REPLICA_ID"] == name
        # Its pod IP and the Deployment's port; the port is a free one here (all "pods" share the host's network).
        assert self.env["GATEWAY_REPLICA_ADDRESS"] == "http://127.0.0.1:8888"
        self.env["GATEWAY_REPLICA_ADDRESS"] = f"http://127.0.0.1:{self.port}"
        # Loopback only here (the Deployment listens on all addresses of its own pod).
        self.args = [arg for arg in container["args"] if not arg.startswith(("--ip=", "--port="))]
        assert len(self.args) == len(container["args"]) - 2
        # No warm pool unless the Deployment asks for one, as for every other test's gateway: its
        # refill (paused only while the machine is busy) would add pods to the one the test counts.
        self.args = without_pool_unless_asked(tuple(self.args))
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

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s (the Deployment's grace period); the exit code."""
        self.container.stop(timeout=30)
        return int(self.container.wait()["StatusCode"])

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


async def test_the_deployments_gateway_containers_run_sandboxes_as_pods_and_hand_them_over_in_a_rolling_update(
        cluster: KubernetesStandIn, docker_client: Any, postgres_url: str) -> None:
    objects = rendered()
    first = GatewayPod(docker_client, objects, cluster.kubeconfig, postgres_url, "code-gateway-5d8c7b9f4-aaaaa")
    second = GatewayPod(docker_client, objects, cluster.kubeconfig, postgres_url, "code-gateway-7f6b5c4d3-bbbbb")
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        first.start()
        await ready(first)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}", headers=headers, timeout=60) as alice:
            health = (await alice.get("/health")).json()
            assert health["provisioner"] == "kubernetes" and health["store"]["kind"] == "postgresql", health
            assert health["engine"]["instance"] == first.name and health["engine"]["namespace"] == NAMESPACE
            sid = (await create(alice))["id"]
            assert (await run(alice, sid, "x = 41"))["status"] == "completed"
            assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
        [posted] = cluster.created
        assert posted["metadata"]["labels"]["code-gateway.instance"] == first.name
        assert posted["spec"]["containers"][0]["image"] == first.env["GATEWAY_KUBERNETESPROVISIONER__IMAGE"]

        second.start()  # the rolling update's new pod (maxSurge 1), ready before the old one goes
        await ready(second)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}", headers=headers, timeout=60) as alice:
            assert (await run(alice, sid, "x"))["result"] == {"text/plain": "41"}  # forwarded to the first
            # SIGTERM, as the kubelet stops a pod (the stand-in answers it meanwhile, on this loop): others
            # run, so it hands its sandboxes over (their leases freed) and leaves their pods.
            assert await asyncio.to_thread(first.stop) == 0, first.logs()
            assert list(cluster.pods) == [(NAMESPACE, f"code-gateway-{sid}")]
            # The second takes the sandbox over: the same pod, the same kernel.
            await until(lambda: lease_holder(postgres_url, sid), lambda holder: holder == second.name,
                        what="the second gateway to take the sandbox over", timeout=60, interval=0.2)
            assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
        assert len(cluster.created) == 1 and list(cluster.pods) == [(NAMESPACE, f"code-gateway-{sid}")]
    finally:
        first.remove()
        second.remove()
