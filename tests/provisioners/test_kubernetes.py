"""Unit tests of ``KubernetesEngine``'s logic (readiness and deaths by watch, relisting, orphans) against a fake API.

``FakeCluster`` is an in-memory stand-in for the pod API (list, watch, create, delete), whose
pods change only when a test says so. It proves the engine's logic, not that it works against a
cluster: no cluster can run here (see README, Kubernetes).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import SandboxStartFailed
from gateway.provisioners.docker import GONE
from gateway.provisioners.kubernetes import KubernetesEngine, exit_code_once_stopped, started_or_failed
from gateway.provisioners.pods import LABEL_INSTANCE, LABEL_SANDBOX, PodFacts, PodSettings


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeCluster:
    """Pods as the API would show them; watches get every change after their version."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.uids = itertools.count(1)
        self.watches: list[asyncio.Queue[tuple[str, dict[str, Any]] | BaseException | None]] = []
        self.lists = 0

    # -- PodApi ----------------------------------------------------------------------------------

    async def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [copy.deepcopy(pod) for pod in self.pods.values()], str(self.version)

    async def watch(self, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | BaseException | None] = asyncio.Queue()
        self.watches.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return  # the server's watch timeout
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.watches.remove(queue)

    async def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        name = pod["metadata"]["name"]
        if name in self.pods:
            raise ApiError(409)
        pod = copy.deepcopy(pod)
        pod["metadata"]["uid"] = f"uid-{next(self.uids)}"
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        self._emit("ADDED", pod)
        return copy.deepcopy(pod)

    async def delete(self, name: str, grace_seconds: int) -> None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            self._emit("DELETED", pod)

    async def find(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [copy.deepcopy(pod) for pod in self.pods.values()
                if all(pod["metadata"]["labels"].get(k) == v for k, v in labels.items())]

    async def apply(self, policy: dict[str, Any]) -> None:
        self.policies[policy["metadata"]["name"]] = policy

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- what the cluster does -------------------------------------------------------------------

    def _emit(self, kind: str, pod: dict[str, Any]) -> None:
        self.version += 1
        pod["metadata"]["resourceVersion"] = str(self.version)
        for queue in self.watches:
            queue.put_nowait((kind, copy.deepcopy(pod)))

    def status(self, name: str, phase: str, state: dict[str, Any] | None = None, **status: Any) -> None:
        pod = self.pods[name]
        pod["status"] = {"phase": phase, **status}
        if state is not None:
            pod["status"]["containerStatuses"] = [{"name": "kernel", "state": state}]
        self._emit("MODIFIED", pod)

    def run(self, name: str, ip: str = "10.0.0.7") -> None:
        self.status(name, "Running", {"running": {}}, podIP=ip)

    def end_watches(self, error: BaseException | None = None) -> None:
        for queue in list(self.watches):
            queue.put_nowait(error)

    def vanish(self, name: str) -> None:
        """Deleted while nobody watched (no event reaches anyone)."""
        del self.pods[name]
        self.version += 1


def a_pod(name: str, sandbox_id: str = "s") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {LABEL_SANDBOX: sandbox_id, LABEL_INSTANCE: "gw"}}, "spec": {}}


@pytest.fixture
async def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
async def engine(cluster: FakeCluster) -> AsyncIterator[KubernetesEngine]:
    async def connect() -> FakeCluster:
        return cluster

    running = KubernetesEngine(connect=connect, settings=PodSettings(namespace="ns", image="img", instance_id="gw"),
                               policies=[{"metadata": {"name": "closed"}}], retry_delay=0.01)
    assert await running.start() == []
    yield running
    await running.stop()


async def settled() -> None:
    """Let the watch task deliver what was emitted (it runs on this loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_start_applies_the_policies_and_lists_once(engine: KubernetesEngine, cluster: FakeCluster) -> None:
    assert list(cluster.policies) == ["closed"]
    assert cluster.lists == 1 and engine.connected
    assert engine.describe()["watch_connected"] is True


async def test_readiness_comes_from_the_watch(engine: KubernetesEngine, cluster: FakeCluster) -> None:
    await engine.create(a_pod("p"))
    ready = asyncio.ensure_future(engine.until("p", started_or_failed))
    await settled()
    assert not ready.done()
    cluster.status("p", "Pending", {"waiting": {"reason": "ContainerCreating"}})
    cluster.status("p", "Running", {"running": {}})  # running, but no address yet
    await settled()
    assert not ready.done()
    cluster.run("p", ip="10.0.0.9")
    facts = await asyncio.wait_for(ready, 5)
    assert facts.started and facts.ip == "10.0.0.9"
    assert cluster.lists == 1  # nothing was polled


async def test_a_pod_that_cannot_start_fails_the_start_at_once(engine: KubernetesEngine, cluster: FakeCluster) -> None:
    await engine.create(a_pod("p"))
    ready = asyncio.ensure_future(engine.until("p", started_or_failed))
    cluster.status("p", "Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}})
    with pytest.raises(SandboxStartFailed, match="ImagePullBackOff: pull access denied"):
        await asyncio.wait_for(ready, 5)


async def test_deaths_and_their_reasons(engine: KubernetesEngine, cluster: FakeCluster) -> None:
    for name in ("oom", "evicted", "deleted", "ours", "exited"):
        await engine.create(a_pod(name))
        cluster.run(name)
    ends = {name: asyncio.ensure_future(engine.until(name, exit_code_once_stopped))
            for name in ("oom", "evicted", "deleted", "ours", "exited")}
    cluster.status("oom", "Failed", {"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    cluster.status("evicted", "Failed", {"terminated": {"reason": "Error", "exitCode": 137}}, reason="Evicted")
    await cluster.delete("deleted", 30)  # kubectl delete pod
    await engine.delete("ours")
    cluster.status("exited", "Failed", {"terminated": {"reason": "Error", "exitCode": 1}})
    codes = {name: await asyncio.wait_for(end, 5) for name, end in ends.items()}
    assert codes == {"oom": 137, "evicted": 137, "deleted": GONE, "ours": GONE, "exited": 1}
    reasons = {}
    for name in ends:
        facts = engine.facts(name)
        assert facts is not None
        reasons[name] = facts.exit_reason(deleted_by_us=engine.deleted_by_us(name))
    assert reasons == {"oom": "out_of_memory", "evicted": "sandbox_died", "deleted": "sandbox_died",
                       "ours": "kernel_died", "exited": "kernel_died"}


async def test_a_broken_watch_is_listed_again_and_what_went_meanwhile_is_seen(
    engine: KubernetesEngine, cluster: FakeCluster
) -> None:
    await engine.create(a_pod("p"))
    cluster.run("p")
    end = asyncio.ensure_future(engine.until("p", exit_code_once_stopped))
    await settled()
    cluster.end_watches(ConnectionResetError("the API went away"))
    cluster.vanish("p")
    assert await asyncio.wait_for(end, 5) == GONE
    assert cluster.lists == 2 and engine.connected


async def test_an_expired_version_lists_again_at_once_and_a_server_timeout_resumes(
    engine: KubernetesEngine, cluster: FakeCluster
) -> None:
    cluster.end_watches(None)  # the server's timeout: the watch goes on from its version, no list
    await settled()
    assert cluster.lists == 1 and len(cluster.watches) == 1
    cluster.end_watches(ApiError(410))
    await settled()
    assert cluster.lists == 2 and len(cluster.watches) == 1


async def test_an_earlier_pod_of_the_same_name_does_not_fail_the_new_one(
    engine: KubernetesEngine, cluster: FakeCluster
) -> None:
    old = await cluster.create(a_pod("p"))
    cluster.run("p")
    await settled()
    del cluster.pods["p"]  # removed, its DELETED event still on its way
    await engine.create(a_pod("p"))
    cluster.version += 1
    for queue in cluster.watches:
        queue.put_nowait(("DELETED", {**old, "status": {"phase": "Running"}}))
    ready = asyncio.ensure_future(engine.until("p", started_or_failed))
    await settled()
    assert not ready.done()
    cluster.run("p", ip="10.0.0.8")
    assert (await asyncio.wait_for(ready, 5)).ip == "10.0.0.8"


async def test_reattach_finds_the_pod_by_its_labels_and_orphans_go(engine: KubernetesEngine,
                                                                  cluster: FakeCluster) -> None:
    await engine.create(a_pod("code-gateway-kept", "kept"))
    await engine.create(a_pod("code-gateway-orphan", "orphan"))
    cluster.run("code-gateway-kept", ip="10.0.0.5")
    found = await engine.find("kept")
    assert isinstance(found, PodFacts) and found.name == "code-gateway-kept" and found.ip == "10.0.0.5"
    assert await engine.find("nobody") is None
    other = a_pod("code-gateway-theirs", "theirs")
    other["metadata"]["labels"][LABEL_INSTANCE] = "another-replica"
    await engine.create(other)
    # What the orphan sweep decides on: every gateway pod of the namespace, with who started it.
    assert sorted(await engine.containers()) == [("code-gateway-kept", "kept", "gw"),
                                                 ("code-gateway-orphan", "orphan", "gw"),
                                                 ("code-gateway-theirs", "theirs", "another-replica")]
    await engine.remove("code-gateway-orphan")
    assert sorted(cluster.pods) == ["code-gateway-kept", "code-gateway-theirs"]
