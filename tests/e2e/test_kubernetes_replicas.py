"""Two ``--provisioner=kubernetes`` gateway replicas (separate processes) on one real PostgreSQL and one
Kubernetes STAND-IN (``tests.kubernetes_stand_in``: the pod API over HTTP, each pod a Docker
container) — not a cluster.

Each replica's engine watches every gateway pod of the sandbox namespace, not only the pods it
started: so when replica A is SIGKILLed, replica B takes A's sandbox over (its lease) and finds its
pod, its variables intact; B hears of that pod's death when it is deleted from outside (as
``kubectl delete pod``): ``sandbox_died``; and B's orphan sweep removes the warm-pool pod A left,
once A's heartbeat lapsed — never while A was alive.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.provisioners.pods import LABEL_INSTANCE, LABEL_SANDBOX
from tests.api.test_pool import NEVER_SATURATED
from tests.e2e.test_scale_out import lease_holder
from tests.gateways import GatewayProcess, create, run
from tests.kubernetes_stand_in import KubernetesStandIn
from tests.waiting import pool_state, until, until_status

pytestmark = pytest.mark.docker

NAMESPACE = "code-gateway-sandboxes"
LEASE_TIMEOUT = 3.0


@pytest.fixture
async def cluster(tmp_path: Path, docker_client: Any) -> AsyncIterator[KubernetesStandIn]:
    async with KubernetesStandIn(docker_client, tmp_path) as running:
        yield running


def replica(cluster: KubernetesStandIn, data_dir: Path, replica_id: str, postgres_url: str,
            *args: str) -> GatewayProcess:
    return GatewayProcess(data_dir, f"--replica-id={replica_id}", f"--store-url={postgres_url}",
                          f"--lease-timeout={LEASE_TIMEOUT:g}", f"--KubernetesProvisioner.kubeconfig={cluster.kubeconfig}",
                          "--SandboxManager.orphan_interval=1", *args, provisioner="kubernetes")


def pods_of(cluster: KubernetesStandIn, instance: str) -> dict[str, str]:
    """Pod name -> sandbox id of the pods ``instance`` started (that the stand-in still has)."""
    return {name: pod["metadata"]["labels"][LABEL_SANDBOX] for (_, name), pod in cluster.pods.items()
            if pod["metadata"]["labels"].get(LABEL_INSTANCE) == instance}


async def test_a_replica_takes_over_a_dead_ones_pods_hears_of_their_deaths_and_clears_its_pool(
        cluster: KubernetesStandIn, tmp_path: Path, postgres_url: str) -> None:
    a_id, b_id = f"k8s-a-{uuid.uuid4().hex[:8]}", f"k8s-b-{uuid.uuid4().hex[:8]}"
    a = replica(cluster, tmp_path / "a", a_id, postgres_url, "--pool-size=1", NEVER_SATURATED)
    b = replica(cluster, tmp_path / "b", b_id, postgres_url, "--pool-size=0")
    try:
        await a.start()
        async with a.client() as on_a:
            sid = (await create(on_a))["id"]
            assert (await run(on_a, sid, "x = 41"))["status"] == "completed"
            await pool_state(on_a, ready=1)  # (the pool's pod, refilled if the create took it)
        pooled = {name for name, sandbox in pods_of(cluster, a_id).items() if sandbox != sid}
        assert len(pooled) == 1, pods_of(cluster, a_id)
        assert await lease_holder(postgres_url, sid) == a_id

        await b.start()  # A is alive: B's start-up sweep leaves A's pods (its sandbox's and its pool's)
        async with b.client() as on_b:
            assert (await run(on_b, sid, "x"))["result"] == {"text/plain": "41"}  # forwarded to A
            assert pooled <= set(pods_of(cluster, a_id))

            a.kill()
            # B notices on its own once A's heartbeat lapsed, takes the lease and finds A's pod.
            await until(lambda: lease_holder(postgres_url, sid), lambda holder: holder == b_id,
                        what="replica B to take the sandbox over", timeout=LEASE_TIMEOUT * 10, interval=0.1)
            assert (await run(on_b, sid, "x + 1"))["result"] == {"text/plain": "42"}  # the same kernel
            assert f"code-gateway-{sid}" in pods_of(cluster, a_id)  # (still labelled as A started it)

            # A's warm-pool pod: no record, its replica dead: B's sweep removes it.
            await until(lambda: pooled & set(pods_of(cluster, a_id)), lambda left: not left,
                        what="replica B to remove the warm-pool pod dead replica A left",
                        timeout=LEASE_TIMEOUT * 10 + 30, interval=0.2)
            assert f"code-gateway-{sid}" in pods_of(cluster, a_id)  # the taken-over one stays

            # Its pod deleted from outside, as `kubectl delete pod`: B's watch says so.
            assert await cluster.delete_pod(f"code-gateway-{sid}") is not None
            failed = await until_status(on_b, sid, "failed", timeout=60)
            assert failed["status_reason"] == "sandbox_died", failed
            assert not pods_of(cluster, b_id)  # B started no pod of its own for any of this
    finally:
        a.kill()
        b.kill()
