"""Unit tests of the ``kubernetes`` provisioner's specs and of how it reads pods (no cluster involved).

What the provisioner asks of a cluster is checked against the hardening list item by item; how
it reads a pod is checked on pod JSON written to the shape of the Kubernetes API's Pod (v1)
reference, not recorded from a live cluster: none can run here. These prove the logic, not that
a cluster accepts or enforces it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.provisioners.pods import (
    ANNOTATION_OWNER,
    LABEL_INSTANCE,
    LABEL_NETWORK,
    LABEL_SANDBOX,
    NETWORK_POLICY,
    SANDBOX_POLICY,
    PodFacts,
    PodSettings,
    network_policies,
    pod_manifest,
)
from gateway.provisioners.transport import KERNEL_PORTS
from gateway.sandboxes.model import ResourceLimits, Sandbox

SETTINGS = PodSettings(namespace="sandboxes", image="registry.example/code-gateway/python:0.1.0", instance_id="gw-1")


def sandbox(**limits: Any) -> Sandbox:
    return Sandbox(owner="alice@example.com", resources=ResourceLimits(**limits), provisioner="kubernetes")


def manifest(**limits: Any) -> dict[str, Any]:
    return pod_manifest(SETTINGS, sandbox(**limits), ["tini", "-g", "--", "python3"], {"A": "1"})


def test_the_pod_is_hardened_as_listed() -> None:
    pod = manifest(cpu=0.5, memory_mb=300, disk_mb=64)
    spec = pod["spec"]
    [container] = spec["containers"]
    context = container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True and context["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == context["runAsUser"] == 1000
    assert spec["securityContext"]["runAsGroup"] == context["runAsGroup"] == 1000
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False  # no environment variables naming the cluster's services
    assert not spec["hostNetwork"] and not spec["hostPID"] and not spec["hostIPC"]
    assert spec["restartPolicy"] == "Never"
    # emptyDir with a size for /tmp and the home directory (and the kernel's connection file)
    volumes = {volume["name"]: volume["emptyDir"] for volume in spec["volumes"]}
    assert volumes["tmp"] == volumes["home"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert volumes["run"]["sizeLimit"] == "1Mi"
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/home/sandbox": "home", "/run/code-gateway": "run"}
    # requests = limits (Guaranteed QoS)
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "500m", "memory": "300Mi"}
    assert "runtimeClassName" not in spec
    assert {port["containerPort"] for port in container["ports"]} == set(KERNEL_PORTS.values())


def test_labels_runtime_class_image_and_the_operators_options() -> None:
    settings = dataclasses.replace(SETTINGS, runtime_class="gvisor", pod_options={"nodeSelector": {"pool": "sandboxes"}})
    pod = pod_manifest(settings, sandbox(network=True), ["python3"], {})
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["nodeSelector"] == {"pool": "sandboxes"}
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_INSTANCE] == "gw-1" and labels[LABEL_SANDBOX] == pod["metadata"]["name"].removeprefix("code-gateway-")
    assert labels[LABEL_NETWORK] == "true" and LABEL_NETWORK not in manifest()["metadata"]["labels"]
    # An owner need not be a valid label value: it is an annotation.
    assert pod["metadata"]["annotations"] == {ANNOTATION_OWNER: "alice@example.com"}
    assert pod["spec"]["containers"][0]["image"] == SETTINGS.image


def test_policies_admit_only_gateway_pods_to_the_kernel_ports_and_deny_all_egress() -> None:
    closed, opened = network_policies(namespace="sandboxes", gateway_namespace="gateway",
                                      gateway_labels={"app.kubernetes.io/name": "code-gateway"},
                                      egress_cidrs=["0.0.0.0/0"])
    assert closed["metadata"]["name"] == SANDBOX_POLICY and closed["metadata"]["namespace"] == "sandboxes"
    spec = closed["spec"]
    assert spec["podSelector"] == {"matchExpressions": [{"key": LABEL_SANDBOX, "operator": "Exists"}]}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []  # nothing out, DNS included
    [rule] = spec["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "code-gateway"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 51001, "endPort": 51005}]
    # Sandboxes that asked for a network: public addresses and the cluster's DNS, never private ranges.
    assert opened["metadata"]["name"] == NETWORK_POLICY
    assert opened["spec"]["podSelector"] == {"matchLabels": {LABEL_NETWORK: "true"}}
    assert opened["spec"]["policyTypes"] == ["Egress"] and "ingress" not in opened["spec"]
    public, dns = opened["spec"]["egress"]
    block = public["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"} <= set(block["except"])
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


# -- reading pods: JSON of the API's Pod shape -------------------------------------------------


def pod(phase: str = "Running", *, state: dict[str, Any] | None = None, ip: str | None = "10.1.2.3",
        reason: str | None = None, conditions: list[dict[str, Any]] | None = None, deleting: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if ip:
        status["podIP"] = ip
    if reason:
        status["reason"] = reason
    if state is not None:
        status["containerStatuses"] = [{"name": "kernel", "state": state, "ready": "running" in state}]
    metadata: dict[str, Any] = {"name": "code-gateway-s1", "uid": "u-1", "resourceVersion": "7"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


RUNNING = {"running": {"startedAt": "2026-12-01T12:00:00Z"}}


def terminated(reason: str, code: int) -> dict[str, Any]:
    return {"terminated": {"reason": reason, "exitCode": code, "finishedAt": "2026-12-01T12:01:00Z"}}


def test_a_pod_is_started_once_its_kernel_runs_with_an_address() -> None:
    assert not PodFacts.of(pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}, ip=None)).started
    assert not PodFacts.of(pod("Running", state=RUNNING, ip=None)).started
    facts = PodFacts.of(pod("Running", state=RUNNING))
    assert facts.started and not facts.stopped and facts.ip == "10.1.2.3" and facts.uid == "u-1"
    assert not PodFacts.of(pod("Running", state=RUNNING, deleting=True)).started


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"])
def test_a_pod_that_cannot_start_is_hopeless(reason: str) -> None:
    facts = PodFacts.of(pod("Pending", state={"waiting": {"reason": reason, "message": "no such image"}}, ip=None))
    assert facts.hopeless and not facts.started and facts.message == "no such image"
    assert not PodFacts.of(pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}, ip=None)).hopeless


@pytest.mark.parametrize(("facts", "deleted_by_us", "reason"), [
    (PodFacts.of(pod("Failed", state=terminated("OOMKilled", 137))), False, "out_of_memory"),
    (PodFacts.of(pod("Failed", state=terminated("Error", 1))), False, "kernel_died"),
    (PodFacts.of(pod("Succeeded", state=terminated("Completed", 0))), False, "kernel_died"),
    (PodFacts.of(pod("Failed", reason="Evicted", state=terminated("Error", 137))), False, "sandbox_died"),
    (PodFacts.of(pod("Failed", state=terminated("Error", 143), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])), False, "sandbox_died"),
    (PodFacts.of(pod("Running", state=RUNNING), deleted=True), False, "sandbox_died"),  # kubectl delete pod
    (PodFacts.of(pod("Running", state=RUNNING), deleted=True), True, "kernel_died"),  # we ended it ourselves
    (PodFacts.of(pod("Failed", state=terminated("OOMKilled", 137)), deleted=True), False, "out_of_memory"),
])
def test_why_a_pod_stopped(facts: PodFacts, deleted_by_us: bool, reason: str) -> None:
    assert facts.stopped
    assert facts.exit_reason(deleted_by_us=deleted_by_us) == reason


def test_the_pod_and_the_policies_fit_the_api_schema() -> None:
    """Every field known to the API where it is put, of its type, none required missing (offline check)."""
    from tests.deploy.kubernetes_schema import problems

    policies = network_policies(namespace="sandboxes", gateway_namespace="gateway",
                                gateway_labels={"app.kubernetes.io/name": "code-gateway"}, egress_cidrs=["0.0.0.0/0"])
    for obj in [manifest(cpu=0.5, memory_mb=300, disk_mb=64, network=True), *policies]:
        assert problems(obj) == [], obj["metadata"]["name"]
