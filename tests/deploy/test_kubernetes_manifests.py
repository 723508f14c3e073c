"""deploy/kubernetes, checked offline: no cluster can run here (README.md, Kubernetes).

``kubectl kustomize`` renders the directory as ``kubectl apply -k`` would; every object is then
checked against the API's schema as the official client's models carry it (unknown or misplaced
fields, wrong types, missing required fields: ``tests.deploy.kubernetes_schema``), and against
what the gateway expects: the configuration the Deployment gives is the one the gateway reads
(its own option parser), the labels the sandbox pods admit are the gateway pods', the Role grants
what the provisioner calls, the ports are the kernel ports. ``kubectl apply --dry-run=client``
itself needs an API server (it asks for the API's resource list first), so it is not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import GatewayApp
from gateway.metrics import GatewayMetrics
from gateway.provisioners.kubernetes import KubernetesProvisioner
from gateway.provisioners.pods import LABEL_SANDBOX
from gateway.provisioners.transport import PORT_RANGE
from gateway.replica import Replica
from gateway.sandboxes.manager import SandboxManager
from tests.deploy.kubernetes_schema import problems
from tests.deploy.manifests import DEPLOY, Objects, container_env, gateway_container, rendered

AUTOSCALER = "horizontalpodautoscaler.yaml"


def autoscaler() -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((DEPLOY / AUTOSCALER).read_text())
    return obj


@pytest.fixture(scope="module")
def objects() -> Objects:
    return rendered()


def one(objects: Objects, kind: str, name: str = "code-gateway",
        namespace: str = "code-gateway") -> dict[str, Any]:
    return objects[(kind, namespace, name)]


def test_every_file_is_rendered_and_every_object_fits_the_api_schema(
        objects: Objects) -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert AUTOSCALER in listed
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {kind for kind, _, _ in objects} == {
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "Deployment", "Service",
        "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"}
    for obj in objects.values():
        assert problems(obj) == [], obj["metadata"]["name"]


def test_the_schema_check_finds_what_a_server_would_refuse() -> None:
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
              "spec": {"replicas": "3", "selector": {}, "template": {"spec": {"containers": [
                  {"image": "i", "readinessProbe": {"httpGet": {"path": "/ready", "port": 8888}}, "resource": {}}]}}}}
    assert problems(broken) == [
        "Deployment/x.spec.replicas: '3' is not int",
        "Deployment/x.spec.template.spec.containers[0]: unknown field 'resource' in V1Container",
        "Deployment/x.spec.template.spec.containers[0]: Invalid value for `name`, must not be `None`",
    ]


def test_the_deployment_configures_the_gateway_as_it_reads_its_options(
        objects: Objects, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = gateway_container(objects)
    secret = one(objects, "Secret")
    fields = {"metadata.name": "code-gateway-5d8c7b9f4-x2k7q", "status.podIP": "10.1.2.3"}
    for name, value in container_env(objects, {}, fields).items():
        monkeypatch.setenv(name, value)
    app = GatewayApp()
    app.initialize(list(container["args"]))
    assert (app.ip, app.port, app.store_url) == ("0.0.0.0", 8888, secret["stringData"]["store-url"])
    assert app.config.KernelLauncher.provisioner == "kubernetes"
    options = KubernetesProvisioner(parent=app)
    # Every pod is a replica of its own (its name), reached by the others at its pod IP.
    assert app.replica_id == fields["metadata.name"] and not options.instance_id
    Replica.claim(tmp_path, id_=app.replica_id).release()  # (raises for an id a replica may not have)
    assert app.replica_address == "http://10.1.2.3:8888"
    assert deployment["spec"]["replicas"] == 3
    # A new replica is ready before an old one stops (and hands its sandboxes over); even the last
    # one stopping leaves the sandbox pods for the next to take over.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert app.config.SandboxManager.keep_on_shutdown
    hand_over = SandboxManager.class_traits()["hand_over_on_shutdown"]
    assert hand_over.default_value is True and "hand_over_on_shutdown" not in app.config.SandboxManager
    assert options.namespace == "code-gateway-sandboxes"
    # The sandbox pods admit only pods with these labels (and the gateway's namespace, from its token).
    assert dict(options.gateway_labels).items() <= pod["metadata"]["labels"].items()

    assert container["ports"][0]["containerPort"] == 8888
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    context = {**pod["spec"]["securityContext"], **container["securityContext"]}
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"] and context["seccompProfile"]["type"] == "RuntimeDefault"
    mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/code-gateway"} <= mounted  # the only writable places

    selector = deployment["spec"]["selector"]["matchLabels"]
    assert one(objects, "Service")["spec"]["selector"] == selector
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == selector
    assert budget["maxUnavailable"] == 1  # drains take one of the 3 at a time
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa == autoscaler()["spec"] and hpa["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "code-gateway"}
    [metric] = hpa["metrics"]
    # A series the gateway exports, by its name and labels (as /metrics renders it).
    metrics = GatewayMetrics()
    metrics.watch(live=lambda: 7, busy=lambda: 1, pool_ready=lambda: 0)
    wanted = metric["pods"]["metric"]
    labels = ",".join(f'{key}="{value}"' for key, value in wanted["selector"]["matchLabels"].items())
    assert f"{wanted['name']}{{{labels}}} 7.0" in metrics.render().decode()


def test_the_role_grants_what_the_provisioner_calls_in_the_sandbox_namespace_only(
        objects: Objects) -> None:
    role = one(objects, "Role", namespace="code-gateway-sandboxes")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # ClusterApi: list + watch, create, delete, find (list) pods; create or replace (update) policies.
    assert granted == {("", "pods", verb) for verb in ("get", "list", "watch", "create", "delete")} | {
        ("networking.k8s.io", "networkpolicies", verb) for verb in ("get", "create", "update")}
    binding = one(objects, "RoleBinding", namespace="code-gateway-sandboxes")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "code-gateway", "namespace": "code-gateway"}]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "code-gateway"
    assert not any(kind in ("ClusterRole", "ClusterRoleBinding") for kind, _, _ in objects)


def test_the_network_policies_close_the_sandbox_namespace_and_open_only_the_kernel_ports(
        objects: Objects) -> None:
    sandboxes = one(objects, "Namespace", name="code-gateway-sandboxes", namespace="")
    assert sandboxes["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deny = one(objects, "NetworkPolicy", name="default-deny", namespace="code-gateway-sandboxes")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}  # no rule: nothing in, nothing out
    gateway = one(objects, "NetworkPolicy")["spec"]
    to_kernels = next(rule for rule in gateway["egress"]
                      if any("namespaceSelector" in peer for peer in rule.get("to", []))
                      and rule["ports"][0]["port"] == PORT_RANGE[0])
    [peer] = to_kernels["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "code-gateway-sandboxes"}
    assert peer["podSelector"]["matchExpressions"] == [{"key": LABEL_SANDBOX, "operator": "Exists"}]
    assert to_kernels["ports"] == [{"protocol": "TCP", "port": PORT_RANGE[0], "endPort": PORT_RANGE[1]}]
    assert gateway["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8888}]}]
