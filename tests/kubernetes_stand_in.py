"""A stand-in for a Kubernetes API server and its kubelet, for tests: NOT a cluster.

    async with KubernetesStandIn(docker_client) as cluster:
        gateway = InProcessGateway(data, "--provisioner=kubernetes",
                                   f"--KubernetesProvisioner.kubeconfig={cluster.kubeconfig}", ...)
        cluster.created            # the pod manifests the gateway posted, as it posted them
        await cluster.delete_pod("code-gateway-<id>")   # kubectl delete pod, as an operator would

It speaks the part of the REST API the gateway uses (pods: list, watch, get, create, delete,
by equality and existence label selectors; network policies: create, replace), over real HTTP, so the gateway's kubernetes_asyncio client
runs unchanged, and it runs each pod's container as a Docker container built from the pod's spec
(image, command, environment, user, read-only root, dropped capabilities, no privilege
escalation, memory-backed emptyDirs with their sizes, CPU and memory limits) on an internal
Docker network with inter-container traffic disabled, reporting its address and its end (exit
code, OOMKilled) as pod status. It enforces no NetworkPolicy, schedules nothing, pulls nothing
(a missing image is ErrImagePull), and checks no permission: what it proves is that the
gateway's side works with an API of this shape and that the pods it asks for run the kernel.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

NETWORK_PREFIX = "code-gateway-test-pods"


def now() -> str:
    return "2026-12-01T12:00:00Z"


def selected(pod: dict[str, Any], selector: str) -> bool:
    """Whether the pod's labels match a label selector's equality and existence terms
    (``key=value``, ``key==value``, ``key!=value``, ``key``, ``!key``; no set terms)."""
    labels = pod["metadata"].get("labels") or {}
    for term in filter(None, (term.strip() for term in selector.split(","))):
        if "!=" in term:
            key, _, value = term.partition("!=")
            matches = labels.get(key) != value
        elif "=" in term:
            key, _, value = term.partition("=")
            matches = labels.get(key) == value.removeprefix("=")
        elif term.startswith("!"):
            matches = term[1:] not in labels
        else:
            matches = term in labels
        if not matches:
            return False
    return True


def quantity_bytes(value: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(float(value[:-2]) * factor)
    return int(value)


def cpu_nanos(value: str) -> int:
    return int(float(value[:-1]) * 1e6) if value.endswith("m") else int(float(value) * 1e9)


class KubernetesStandIn:
    def __init__(self, docker_client: Any, directory: Path) -> None:
        self.docker = docker_client
        self.directory = directory
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        #: Every pod manifest as posted (before the stand-in added status).
        self.created: list[dict[str, Any]] = []
        self.version = itertools.count(1)
        self.current = 0
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.network = f"{NETWORK_PREFIX}-{uuid.uuid4().hex[:6]}"
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: HTTPServer | None = None
        self.kubeconfig = directory / "kubeconfig"

    async def __aenter__(self) -> KubernetesStandIn:
        await asyncio.to_thread(self.docker.networks.create, self.network, internal=True,
                                options={"com.docker.network.bridge.enable_icc": "false"})
        app = Application([
            (r"/api/v1/namespaces/([^/]+)/pods", PodsHandler, {"cluster": self}),
            (r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", PodHandler, {"cluster": self}),
            (r"/apis/networking.k8s.io/v1/namespaces/([^/]+)/networkpolicies", PoliciesHandler, {"cluster": self}),
            (r"/apis/networking.k8s.io/v1/namespaces/([^/]+)/networkpolicies/([^/]+)", PolicyHandler,
             {"cluster": self}),
        ])
        sockets = bind_sockets(0, "127.0.0.1")
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "gateway", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "gateway"}}],
        }))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.server is not None:
            self.server.stop()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for container in await asyncio.to_thread(self.docker.containers.list, all=True,
                                                 filters={"label": f"stand-in={self.network}"}):
            await asyncio.to_thread(container.remove, force=True)
        await asyncio.to_thread(lambda: self.docker.networks.get(self.network).remove())

    # -- the API's state -------------------------------------------------------------------------

    async def emit(self, kind: str, pod: dict[str, Any]) -> None:
        async with self.changed:
            self.current = next(self.version)
            pod["metadata"]["resourceVersion"] = str(self.current)
            self.history.append((self.current, kind, copy.deepcopy(pod)))
            self.changed.notify_all()

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        self.created.append(copy.deepcopy(manifest))
        pod = copy.deepcopy(manifest)
        pod["metadata"].update(uid=str(uuid.uuid4()), namespace=namespace, creationTimestamp=now())
        pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        self.pods[(namespace, pod["metadata"]["name"])] = pod
        await self.emit("ADDED", pod)
        self.spawn(self.kubelet(namespace, pod))
        return pod

    async def delete_pod(self, name: str, namespace: str = "code-gateway-sandboxes") -> dict[str, Any] | None:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return None
        pod["metadata"]["deletionTimestamp"] = now()
        await self.emit("MODIFIED", pod)
        container_id = pod.pop("_container", None)
        if container_id is not None:
            await asyncio.to_thread(self._remove, container_id)
        self.pods.pop((namespace, name), None)
        await self.emit("DELETED", pod)
        return pod

    def _remove(self, container_id: str) -> None:
        import docker.errors

        try:
            self.docker.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass

    # -- the kubelet -----------------------------------------------------------------------------

    def container_options(self, pod: dict[str, Any]) -> dict[str, Any]:
        spec = pod["spec"]
        [container] = spec["containers"]
        context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        group = spec.get("securityContext", {}).get("fsGroup", context.get("runAsGroup", 0))
        tmpfs = {}
        for mount in container.get("volumeMounts", []):
            empty = volumes[mount["name"]]["emptyDir"]
            assert empty.get("medium") == "Memory", "the stand-in only runs memory-backed emptyDirs"
            size = quantity_bytes(empty["sizeLimit"])
            tmpfs[mount["mountPath"]] = f"size={size},uid={context.get('runAsUser', 0)},gid={group},mode=0770"
        limits = container.get("resources", {}).get("limits", {})
        return {
            "image": container["image"],
            "entrypoint": container["command"][:1],
            "command": container["command"][1:],
            "environment": {entry["name"]: entry["value"] for entry in container.get("env", [])},
            "working_dir": container.get("workingDir"),
            "user": f"{context['runAsUser']}:{context['runAsGroup']}",
            "read_only": bool(context.get("readOnlyRootFilesystem")),
            "cap_drop": list(context.get("capabilities", {}).get("drop", [])),
            "security_opt": [] if context.get("allowPrivilegeEscalation", True) else ["no-new-privileges"],
            "tmpfs": tmpfs,
            "mem_limit": quantity_bytes(limits["memory"]),
            "memswap_limit": quantity_bytes(limits["memory"]),
            "nano_cpus": cpu_nanos(limits["cpu"]),
            "pids_limit": 256,
            "network": self.network,
            "hostname": spec.get("hostname"),
            "labels": {"stand-in": self.network},
            "detach": True,
        }

    async def kubelet(self, namespace: str, pod: dict[str, Any]) -> None:
        import docker.errors

        [spec] = pod["spec"]["containers"]
        status = {"name": spec["name"], "image": spec["image"], "imageID": "", "restartCount": 0, "ready": False}
        try:
            container = await asyncio.to_thread(self.docker.containers.create, **self.container_options(pod))
        except docker.errors.ImageNotFound:
            pod["status"]["containerStatuses"] = [{**status, "state": {"waiting": {
                "reason": "ErrImagePull", "message": f"image {spec['image']} not found"}}}]
            await self.emit("MODIFIED", pod)
            return
        pod["_container"] = container.id
        await asyncio.to_thread(container.start)
        await asyncio.to_thread(container.reload)
        if (namespace, pod["metadata"]["name"]) not in self.pods:
            return  # deleted meanwhile
        pod["status"].update(phase="Running", podIP=container.attrs["NetworkSettings"]["Networks"][self.network]
                             ["IPAddress"], containerStatuses=[{**status, "ready": True, "state": {
                                 "running": {"startedAt": now()}}}])
        await self.emit("MODIFIED", pod)
        try:
            result = await asyncio.to_thread(container.wait)
            state = await asyncio.to_thread(self.docker.api.inspect_container, container.id)
        except docker.errors.NotFound:
            return  # removed: delete_pod says so
        if pod.get("_container") != container.id:
            return
        code = int(result.get("StatusCode", 1))
        oom = state["State"].get("OOMKilled") or (code == 128 + 9 and await asyncio.to_thread(self._oom_event, container.id))
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        pod["status"].update(phase="Succeeded" if code == 0 else "Failed", containerStatuses=[{
            **status, "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now()}}}])
        await self.emit("MODIFIED", pod)

    def _oom_event(self, container_id: str) -> bool:
        """Whether the engine told of an OOM kill in the container, within a second of its exit: as a
        kubelet reads the cgroup's OOM kills, not docker's ``State.OOMKilled``, which its exit can
        overwrite with false when the OOM event comes first."""
        until = time.time() + 1.0
        events = self.docker.events(since=int(until) - 600, until=until, decode=True,
                                    filters={"container": container_id, "event": "oom"})
        return any(True for _ in events)

    # -- watches ---------------------------------------------------------------------------------

    async def events_after(self, version: int, selector: str, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.current > version)
            return [(kind, pod) for v, kind, pod in self.history
                    if v > version and selected(pod, selector) and pod["metadata"]["namespace"] == namespace]


def public(pod: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in pod.items() if not key.startswith("_")}


class Handler(RequestHandler):
    def initialize(self, cluster: KubernetesStandIn) -> None:
        self.cluster = cluster

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def status_error(self, code: int, reason: str, message: str) -> None:
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                          "message": message, "code": code})


class PodsHandler(Handler):
    async def get(self, namespace: str) -> None:
        selector = self.get_argument("labelSelector", "")
        if self.get_argument("watch", "") in ("true", "1", "True"):
            await self.watch(namespace, selector, int(self.get_argument("resourceVersion", "0") or 0))
            return
        items = [public(pod) for (ns, _), pod in self.cluster.pods.items() if ns == namespace and selected(pod, selector)]
        limit = int(self.get_argument("limit", "0") or 0)
        self.reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.cluster.current)},
                         "items": items[:limit] if limit else items})

    async def watch(self, namespace: str, selector: str, version: int) -> None:
        self.set_header("Content-Type", "application/json")
        timeout = float(self.get_argument("timeoutSeconds", "300"))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    events = await self.cluster.events_after(version, selector, namespace)
                    version = self.cluster.current
                    for kind, pod in events:
                        self.write(json.dumps({"type": kind, "object": public(pod)}) + "\n")
                    await self.flush()
        except (TimeoutError, StreamClosedError, asyncio.CancelledError):
            pass
        if not self._finished and not self.request.connection.stream.closed():  # type: ignore[attr-defined]
            self.finish()

    async def post(self, namespace: str) -> None:
        manifest = json.loads(self.request.body)
        if (namespace, manifest["metadata"]["name"]) in self.cluster.pods:
            self.status_error(409, "AlreadyExists", f"pods \"{manifest['metadata']['name']}\" already exists")
            return
        self.reply(201, public(await self.cluster.create_pod(namespace, manifest)))


class PodHandler(Handler):
    async def get(self, namespace: str, name: str) -> None:
        pod = self.cluster.pods.get((namespace, name))
        if pod is None:
            self.status_error(404, "NotFound", f"pods \"{name}\" not found")
        else:
            self.reply(200, public(pod))

    async def delete(self, namespace: str, name: str) -> None:
        pod = await self.cluster.delete_pod(name, namespace)
        if pod is None:
            self.status_error(404, "NotFound", f"pods \"{name}\" not found")
        else:
            self.reply(200, public(pod))


class PoliciesHandler(Handler):
    async def post(self, namespace: str) -> None:
        policy = json.loads(self.request.body)
        key = (namespace, policy["metadata"]["name"])
        if key in self.cluster.policies:
            self.status_error(409, "AlreadyExists", "networkpolicies already exists")
            return
        self.cluster.policies[key] = policy
        self.reply(201, policy)


class PolicyHandler(Handler):
    async def put(self, namespace: str, name: str) -> None:
        policy = json.loads(self.request.body)
        self.cluster.policies[(namespace, name)] = policy
        self.reply(200, policy)
