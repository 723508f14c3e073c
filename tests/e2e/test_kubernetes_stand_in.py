"""``--provisioner=kubernetes`` end to end against a STAND-IN for the Kubernetes API and kubelet — not a cluster.

``tests.kubernetes_stand_in`` serves the pod and network-policy API over HTTP (the gateway's
kubernetes_asyncio client runs unchanged against it) and runs every pod the gateway posts as a
Docker container built from the pod's spec. So what is proven here is the gateway's side: the
pods it asks for, that their kernels start from that spec with the real image and are reached
over CurveZMQ at the pod IP the API reports, readiness and deaths from the watch, interrupts as
``interrupt_request``, restarts, re-attaching by labels and the warm pool. Not proven: that a real
API server accepts these objects or that
a cluster enforces the NetworkPolicies (the stand-in enforces none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.provisioners.pods import NETWORK_POLICY, SANDBOX_POLICY
from tests.api.test_pool import NEVER_SATURATED
from tests.gateways import InProcessGateway, create, inside, run
from tests.kubernetes_stand_in import KubernetesStandIn
from tests.waiting import pool_state, until, until_status

pytestmark = pytest.mark.docker

NAMESPACE = "code-gateway-sandboxes"


@pytest.fixture
async def cluster(tmp_path: Any, docker_client: Any) -> AsyncIterator[KubernetesStandIn]:
    async with KubernetesStandIn(docker_client, tmp_path) as running:
        yield running


def gateway_on(cluster: KubernetesStandIn, tmp_path: Any, *args: str) -> InProcessGateway:
    return InProcessGateway(tmp_path / "data", f"--KubernetesProvisioner.kubeconfig={cluster.kubeconfig}", *args,
                            provisioner="kubernetes")


@pytest.fixture
async def gateway(cluster: KubernetesStandIn, tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    async with gateway_on(cluster, tmp_path) as running:
        yield running


@pytest.fixture
async def alice(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("alice") as client:
        yield client


async def test_a_sandbox_is_a_hardened_pod_whose_kernel_is_reached_over_curve(
    gateway: InProcessGateway, alice: httpx.AsyncClient, cluster: KubernetesStandIn
) -> None:
    assert {name for _, name in cluster.policies} == {SANDBOX_POLICY, NETWORK_POLICY}
    sandbox = await create(alice, resources={"cpu": 0.5, "memory_mb": 300, "disk_mb": 64})
    sid = sandbox["id"]
    assert sandbox["provisioner"] == "kubernetes"
    [posted] = cluster.created
    assert posted["metadata"]["name"] == f"code-gateway-{sid}" and posted["metadata"]["namespace"] == NAMESPACE
    spec = posted["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "300Mi"}
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    assert (await run(alice, sid, "x = 41"))["status"] == "completed"
    assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
    pod = cluster.pods[(NAMESPACE, f"code-gateway-{sid}")]
    record = await gateway.app.store.get_sandbox(sid)
    assert record is not None
    connection = record["kernel"]["connection"]
    assert connection["transport"] == "tcp" and connection["ip"] == pod["status"]["podIP"]
    assert len(connection["curve_publickey"]) == 40

    facts = await inside(alice, sid, """
import json, os
try:
    open('/etc/probe', 'w')
    root = 'writable'
except OSError as error:
    root = error.strerror
print(json.dumps({'uid': os.getuid(), 'root': root, 'env': sorted(os.environ)}))
""")
    assert facts["uid"] == 1000 and facts["root"] == "Read-only file system"
    assert "CODE_GATEWAY_CONNECTION" not in facts["env"] and "CODE_GATEWAY_KERNEL_BOOTSTRAP" not in facts["env"]

    # An interrupt is an interrupt_request on the control channel (no signals through the API).
    interrupted = await run(alice, sid, "import time\ntime.sleep(60)", timeout=2)
    assert interrupted["status"] == "timed_out" and "was interrupted" in interrupted["error"]["evalue"]
    assert (await run(alice, sid, "x"))["result"] == {"text/plain": "41"}  # the same kernel, state kept

    # What needs pods/exec says so, and changes nothing.
    for refused in (await alice.get(f"/api/v1/sandboxes/{sid}/files"),
                    await alice.post(f"/api/v1/sandboxes/{sid}/pause")):
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "sandbox_not_running" and "'kubernetes'" in refused.text
    assert (await run(alice, sid, "x"))["result"] == {"text/plain": "41"}

    # A restart is a new pod (new address, new keys), a delete removes it.
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
    assert len(cluster.created) == 2
    assert (await run(alice, sid, "'x' in globals()"))["result"] == {"text/plain": "False"}
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
    assert cluster.pods == {}


async def test_pod_deaths_are_told_apart(alice: httpx.AsyncClient, cluster: KubernetesStandIn) -> None:
    oom = (await create(alice, resources={"memory_mb": 200}))["id"]
    deleted = (await create(alice))["id"]
    exited = (await create(alice))["id"]
    bomb = await run(alice, oom, "chunks = []\nwhile True:\n    chunks.append(b'x' * (32 << 20))")
    assert bomb["status"] == "failed" and bomb["error"]["code"] == "out_of_memory", bomb
    assert (await cluster.delete_pod(f"code-gateway-{deleted}")) is not None  # kubectl delete pod
    assert (await run(alice, exited, "import os; os._exit(3)"))["status"] == "failed"
    reasons = {sid: (await until_status(alice, sid, "failed"))["status_reason"] for sid in (oom, deleted, exited)}
    assert reasons == {oom: "out_of_memory", deleted: "sandbox_died", exited: "kernel_died"}


async def test_reattach_by_labels_after_a_restart_and_the_warm_pool(cluster: KubernetesStandIn,
                                                                      tmp_path: Any) -> None:
    async with gateway_on(cluster, tmp_path, "--keep-sandboxes") as first, first.client("alice") as alice:
        sid = (await create(alice))["id"]
        assert (await run(alice, sid, "x = 41"))["status"] == "completed"
    assert list(cluster.pods) == [(NAMESPACE, f"code-gateway-{sid}")]  # left running
    async with gateway_on(cluster, tmp_path, "--pool-size=1", NEVER_SATURATED) as second, second.client("alice") as alice:
        assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}  # found by its labels
        await pool_state(alice, ready=1)
        posted = len(cluster.created)
        started_ahead = [pod["metadata"]["name"] for pod in cluster.created]
        pooled = (await create(alice))["id"]
        # The new sandbox is the pod the pool started ahead (whose refill may be on its way already).
        assert f"code-gateway-{pooled}" in started_ahead
        assert (await run(alice, pooled, "6 * 7"))["result"] == {"text/plain": "42"}
        await until(lambda: len(cluster.created) == posted + 1, what="the pool to start its next pod")
    assert cluster.pods == {}


async def test_a_pod_whose_image_cannot_be_pulled_fails_the_create_at_once(cluster: KubernetesStandIn,
                                                                            tmp_path: Any) -> None:
    async with gateway_on(cluster, tmp_path, "--KubernetesProvisioner.image=code-gateway/no-such-image:0") as gateway, \
            gateway.client("alice") as alice:
        refused = await alice.post("/api/v1/sandboxes", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "sandbox_start_failed", refused.text
        message = refused.json()["error"]["message"]
        assert "ErrImagePull" in message and "no-such-image" in message
        assert cluster.pods == {}  # the failed pod is deleted
