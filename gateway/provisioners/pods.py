"""What the ``kubernetes`` provisioner asks of a cluster, and how it reads what the cluster says.

    pod = pod_manifest(PodSettings(namespace="sandboxes", image=...), sandbox, cmd, env)   # one sandbox
    for policy in network_policies(namespace="sandboxes", gateway_namespace="gateway",
                                   gateway_labels={"app.kubernetes.io/name": "code-gateway"}): ...
    facts = PodFacts.of(raw_pod)           # from a watch event's object (the API's JSON)
    facts.started, facts.stopped, facts.exit_reason(deleted_by_us=False)

Pure functions of plain JSON (the API's own shape, camelCase), so they are tested without a
cluster or a client library. The hardening mirrors the docker provisioner's: non-root uid 1000,
read-only root, no privilege escalation, all capabilities dropped, the runtime's default seccomp
profile, no service account token, no service links, memory-backed ``emptyDir`` volumes of
``disk_mb`` for /tmp and the home directory, CPU and memory requests equal to the limits, and an
optional ``runtimeClassName`` (gVisor, Kata). The pod's network is closed by policy: sandboxes
admit only gateway pods, on the kernel ports, and send nothing (those that asked for a network,
where the operator allows it, may reach public addresses and the cluster's DNS).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.provisioners.transport import KERNEL_PORTS, PORT_RANGE

LABEL_SANDBOX = "code-gateway.sandbox"
LABEL_INSTANCE = "code-gateway.instance"
LABEL_NETWORK = "code-gateway.network"
#: An annotation, not a label: owner names need not be valid label values.
ANNOTATION_OWNER = "code-gateway.owner"
CONTAINER = "kernel"
HOME = "/home/sandbox"
CONTAINER_DIR = "/run/code-gateway"
SANDBOX_UID = 1000
#: Sandbox pods, for the policy that closes them.
SANDBOX_POLICY = "code-gateway-sandboxes"
#: Sandbox pods that asked for a network, for the policy that opens it.
NETWORK_POLICY = "code-gateway-sandbox-network"
#: Never reachable from a sandbox with a network: the cluster's own and link-local (cloud metadata) ranges.
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
#: Why a pod was taken away from outside (its status reason or a DisruptionTarget condition's).
DISRUPTIONS = {"Evicted", "Preempted", "Preempting", "NodeLost", "NodeShutdown", "Terminated", "Shutdown",
               "UnexpectedAdmissionError", "DeletionByTaintManager", "EvictionByEvictionAPI",
               "PreemptionByScheduler", "TerminationByKubelet", "DeletionByPodGC"}
#: Container waiting reasons that will not pass by themselves: the start fails at once.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
            "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}


def pod_name(sandbox_id: str) -> str:
    return f"code-gateway-{sandbox_id}"


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """What the operator chose for every sandbox pod."""

    namespace: str
    image: str
    instance_id: str
    runtime_class: str = ""
    image_pull_policy: str = "IfNotPresent"
    #: Merged into the pod's ``spec`` last (node selectors, tolerations, priority class...).
    pod_options: dict[str, Any] = dataclasses.field(default_factory=dict)


def cpu_quantity(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def mib(megabytes: float) -> str:
    return f"{int(megabytes)}Mi"


def pod_manifest(settings: PodSettings, sandbox: Any, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The Pod of ``sandbox``: its kernel runs ``cmd`` with ``env``, hardened as described above."""
    limits = sandbox.resources
    quantities = {"cpu": cpu_quantity(limits.cpu), "memory": mib(limits.memory_mb)}
    labels = {LABEL_SANDBOX: sandbox.id, LABEL_INSTANCE: settings.instance_id,
              "app.kubernetes.io/name": "code-gateway-sandbox", "app.kubernetes.io/managed-by": "code-gateway"}
    if limits.network:
        labels[LABEL_NETWORK] = "true"
    unprivileged = {"runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID,
                    "seccompProfile": {"type": "RuntimeDefault"}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "hostname": "sandbox",
        "terminationGracePeriodSeconds": 5,
        "securityContext": {**unprivileged, "fsGroup": SANDBOX_UID},
        "containers": [{
            "name": CONTAINER,
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": cmd,
            "workingDir": HOME,
            "env": [{"name": name, "value": value} for name, value in env.items()],
            "ports": [{"name": name.removesuffix("_port"), "containerPort": port, "protocol": "TCP"}
                      for name, port in KERNEL_PORTS.items()],
            "resources": {"requests": dict(quantities), "limits": dict(quantities)},
            "securityContext": {**unprivileged, "privileged": False, "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME},
                             {"name": "run", "mountPath": CONTAINER_DIR}],
            "stdin": False,
            "tty": False,
        }],
        # Memory-backed, as the docker provisioner's tmpfs: full is ENOSPC inside (and counts as memory).
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": mib(limits.disk_mb)}},
                    {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": mib(limits.disk_mb)}},
                    {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    spec.update(settings.pod_options)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(sandbox.id), "namespace": settings.namespace, "labels": labels,
                     "annotations": {ANNOTATION_OWNER: sandbox.owner}},
        "spec": spec,
    }


def network_policies(*, namespace: str, gateway_namespace: str, gateway_labels: dict[str, str],
                     egress_cidrs: list[str]) -> list[dict[str, Any]]:
    """The policies of the sandbox namespace: only gateway pods reach sandboxes (kernel ports), sandboxes
    reach nothing; sandboxes that asked for a network also reach ``egress_cidrs`` (minus private ranges)
    and the cluster's DNS. Policies add up, so the second only opens what it names."""
    meta = {"namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "code-gateway"}}
    closed = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": SANDBOX_POLICY, **meta},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": LABEL_SANDBOX, "operator": "Exists"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gateway_namespace}},
                          "podSelector": {"matchLabels": dict(gateway_labels)}}],
                "ports": [{"protocol": "TCP", "port": PORT_RANGE[0], "endPort": PORT_RANGE[1]}],
            }],
            "egress": [],
        },
    }
    opened = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, **meta},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_NETWORK: "true"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"ipBlock": {"cidr": cidr, "except": [r for r in PRIVATE_RANGES if _within(r, cidr)]}}
                        for cidr in egress_cidrs]},
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    }
    return [closed, opened]


def _within(inner: str, outer: str) -> bool:
    import ipaddress

    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class PodFacts:
    """What one pod's JSON says about its sandbox."""

    name: str
    #: Which pod of that name (a pod deleted and created again under the same name is another).
    uid: str = ""
    phase: str = "Pending"
    ip: str | None = None
    #: The kernel's container is running.
    running: bool = False
    exit_code: int | None = None
    #: Why the container or the pod stopped (``OOMKilled``, ``Error``, ``Evicted``...), or why it waits.
    reason: str = ""
    message: str = ""
    #: The API said it is deleted (or being deleted).
    deleted: bool = False
    #: Something outside took it away (eviction, preemption, node shutdown...).
    disrupted: bool = False

    @classmethod
    def of(cls, pod: dict[str, Any], *, deleted: bool = False) -> PodFacts:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        state = next((s.get("state") or {} for s in status.get("containerStatuses") or []
                      if s.get("name") == CONTAINER), {})
        terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        disruption = conditions.get("DisruptionTarget") or {}
        reason = str(terminated.get("reason") or status.get("reason") or waiting.get("reason") or "")
        return cls(
            name=str(metadata.get("name") or ""),
            uid=str(metadata.get("uid") or ""),
            phase=str(status.get("phase") or "Pending"),
            ip=status.get("podIP") or None,
            running="running" in state,
            exit_code=None if "exitCode" not in terminated else int(terminated["exitCode"]),
            reason=reason,
            message=str(terminated.get("message") or status.get("message") or waiting.get("message") or ""),
            deleted=deleted or bool(metadata.get("deletionTimestamp")),
            disrupted=(status.get("reason") in DISRUPTIONS
                       or (disruption.get("status") == "True" and disruption.get("reason") in DISRUPTIONS)
                       or (disruption.get("status") == "True" and not disruption.get("reason"))),
        )

    @property
    def started(self) -> bool:
        """Its kernel runs and has an address: the gateway can connect."""
        return self.running and bool(self.ip) and not self.deleted

    @property
    def stopped(self) -> bool:
        """It will never run (again): deleted, failed, succeeded, its container terminated."""
        return self.deleted or self.phase in ("Failed", "Succeeded") or self.exit_code is not None

    @property
    def hopeless(self) -> bool:
        """It waits for something that will not come by itself (an image that cannot be pulled...)."""
        return not self.running and self.reason in HOPELESS

    def exit_reason(self, *, deleted_by_us: bool) -> str:
        """Our name for why it stopped: ``out_of_memory``, ``sandbox_died`` or ``kernel_died``."""
        if self.reason == "OOMKilled":
            return "out_of_memory"
        if self.disrupted or (self.deleted and not deleted_by_us):
            return "sandbox_died"
        if self.exit_code is None and self.phase not in ("Failed", "Succeeded") and not deleted_by_us:
            return "sandbox_died"  # gone without its container saying why
        return "kernel_died"
