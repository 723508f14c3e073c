"""The ``kubernetes`` provisioner: one hardened Pod per sandbox, its kernel reached over TCP with CurveZMQ.

    pip install 'code-interpreter-gateway[kubernetes]'
    code-gateway --provisioner=kubernetes --KubernetesProvisioner.namespace=code-gateway-sandboxes

``KernelLauncher`` starts one ``KubernetesEngine`` per gateway: the API client (in-cluster
service account, or a kubeconfig), the sandbox namespace's network policies (applied at start)
and one watch on every gateway pod of the namespace (those with an instance label, whichever
replica started them), from which every readiness and every death is learnt — nothing polls.
Replicas sharing a store see each other's pods: one taking over a sandbox (its lease) finds the
pod and hears of its death, and the orphan sweep (``containers``/``remove``, through
``gateway.sandboxes.orphans``) sees a dead replica's warm-pool pods. Pods are created with this
replica's own instance label, which says who started them. jupyter_client creates a ``KubernetesProvisioner`` per
kernel, which finds the engine through its parents, as the docker provisioner does.

- **Start**: the pod (``gateway.provisioners.pods.pod_manifest``) runs the kernel through the
  CURVE bootstrap on the fixed kernel ports (``gateway.provisioners.transport``); the connection
  file arrives in an environment variable, as with docker. The start waits (on the watch) until
  the kernel's container runs and the pod has an IP, and fails at once if the pod stops or waits
  for something hopeless (an image that cannot be pulled). The gateway connects to the pod IP
  the API reported.
- **Interrupt**: Kubernetes cannot signal a container, so SIGINT becomes the Jupyter
  ``interrupt_request`` on the kernel's control channel (ipykernel then signals its process
  group, as a signal would). Other signals delete the pod.
- **Deaths** (``exit_reason``): ``OOMKilled`` is ``out_of_memory``; evicted, preempted, deleted
  by anyone but us, or its node gone is ``sandbox_died``; else ``kernel_died``.
- **Re-attach** (after a restart, or taking over another replica's sandbox) finds the pod by its
  sandbox label and reaches its IP again.

Not here (yet): files, tools and pause/resume (they need ``pods/exec``), usage figures, and
lowering a warm-pool pod's limits on claim (pods keep the pool profile's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, List, Unicode, default

from gateway.errors import SandboxStartFailed
from gateway.provisioners import transport
from gateway.provisioners.base import SANDBOX_DIR_KWARG, SANDBOX_KWARG, argv_in_image
from gateway.provisioners.docker import BOOTSTRAP, CONNECTION_ENV, CONTAINER_CONNECTION_FILE, GONE, default_image
from gateway.provisioners.docker import instance_id_for, replica_id_of
from gateway.provisioners.pods import (
    LABEL_INSTANCE,
    LABEL_SANDBOX,
    PodFacts,
    PodSettings,
    network_policies,
    pod_manifest,
)
from gateway.provisioners.usage import Usage
from gateway.tasks import done_within

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Seconds a pod being terminated by us gets before it is killed (kill(): none).
GRACE = 5


class PodApi(Protocol):
    """The calls the engine makes on the cluster (``ClusterApi``; a recorded one in unit tests)."""

    async def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        """The namespace's gateway pods, of every instance (API JSON), and the list's resourceVersion."""

    def watch(self, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, pod JSON) from ``resource_version`` on, until the server ends the watch."""

    async def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The pod as created (with its uid)."""

    async def ping(self) -> None:
        """Raise unless the API answers (a cheap call)."""

    async def delete(self, name: str, grace_seconds: int) -> None:
        """Delete the pod (none there: nothing to do)."""

    async def find(self, labels: dict[str, str]) -> list[dict[str, Any]]: ...

    async def apply(self, policy: dict[str, Any]) -> None:
        """Create or replace a NetworkPolicy."""

    async def close(self) -> None: ...


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a Kubernetes API error (kubernetes_asyncio's ``ApiException`` or a test's)."""
    status = getattr(exc, "status", None)
    return int(status) if isinstance(status, int) else None


class ClusterApi:
    """``PodApi`` over kubernetes_asyncio, for one namespace's gateway pods (of any instance)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.namespace = namespace
        #: An existence selector: every replica's pods (and no other pods of the namespace).
        self.selector = LABEL_INSTANCE

    @classmethod
    async def connect(cls, *, kubeconfig: str, context: str, namespace: str) -> ClusterApi:
        """In a pod: its service account (unless a kubeconfig is named); elsewhere: the kubeconfig."""
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        if kubeconfig or "KUBERNETES_SERVICE_HOST" not in os.environ:
            await config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                          client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(client.ApiClient(configuration), namespace)

    def _json(self, obj: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return data

    async def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        pods = await self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        return [self._json(pod) for pod in pods.items], str(pods.metadata.resource_version or "")

    async def watch(self, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        from kubernetes_asyncio import watch

        async with watch.Watch() as stream:
            async for event in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                             label_selector=self.selector, resource_version=resource_version,
                                             allow_watch_bookmarks=True, timeout_seconds=300):
                yield str(event["type"]), event["raw_object"]

    async def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        # (The API takes its JSON as well as its models.)
        return self._json(await self.core.create_namespaced_pod(self.namespace, pod))  # type: ignore[arg-type]

    async def ping(self) -> None:
        await self.core.list_namespaced_pod(self.namespace, label_selector=self.selector, limit=1)

    async def delete(self, name: str, grace_seconds: int) -> None:
        try:
            await self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=grace_seconds)
        except Exception as exc:
            if status_of(exc) != 404:
                raise

    async def find(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join([self.selector, *(f"{key}={value}" for key, value in labels.items())])
        pods = await self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        return [self._json(pod) for pod in pods.items]

    async def apply(self, policy: dict[str, Any]) -> None:
        name = policy["metadata"]["name"]
        try:
            await self.networking.create_namespaced_network_policy(self.namespace, policy)  # type: ignore[arg-type]
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            await self.networking.replace_namespaced_network_policy(
                name, self.namespace, policy)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.api_client.close()


class KubernetesEngine:
    """What all sandboxes of one gateway share on a cluster: the API, the policies, the one pod watch."""

    def __init__(self, *, connect: Callable[[], Any], settings: PodSettings,
                 policies: list[dict[str, Any]], retry_delay: float = 1.0) -> None:
        self._connect = connect
        self.settings = settings
        self.policies = policies
        self.api: PodApi | None = None
        self.connected = False
        self.retry_delay = retry_delay
        self._facts: dict[str, PodFacts] = {}
        #: name -> uid of the pod we mean by that name (created or found by us).
        self._uids: dict[str, str] = {}
        self._waiters: dict[str, list[Callable[[PodFacts | None], bool]]] = {}
        #: Pods this gateway deleted (their end is not a death from outside).
        self._deleting: set[str] = set()
        self._listed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def configured(cls, parent: Any, runtime_dir: str | os.PathLike[str]) -> KubernetesEngine:
        """An engine set up as the operator configured ``KubernetesProvisioner`` for ``parent``; its pods
        labelled with the replica's id (``replica_id_of``: ``KubernetesProvisioner.instance_id`` sets it when
        ``--replica-id`` is not given)."""
        options = KubernetesProvisioner(parent=parent)
        settings = PodSettings(
            namespace=options.namespace, image=options.image,
            instance_id=replica_id_of(parent) or options.instance_id or instance_id_for(runtime_dir),
            runtime_class=options.runtime_class, image_pull_policy=options.image_pull_policy,
            pod_options=dict(options.pod_options),
        )
        policies = network_policies(namespace=options.namespace, gateway_namespace=options.gateway_namespace,
                                    gateway_labels=dict(options.gateway_labels),
                                    egress_cidrs=list(options.network_egress))

        def connect() -> Any:
            return ClusterApi.connect(kubeconfig=options.kubeconfig, context=options.context,
                                      namespace=options.namespace)

        return cls(connect=connect, settings=settings, policies=policies)

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id

    @property
    def image(self) -> str:
        return self.settings.image

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Connect, apply the network policies, start the watch; returns warnings for /health."""
        try:
            self.api = await self._connect()
            for policy in self.policies:
                await self.api.apply(policy)
        except Exception as exc:
            await self.stop()
            raise RuntimeError(f"the Kubernetes API cannot be used for namespace {self.settings.namespace} "
                               f"({exc}); check the kubeconfig or service account and its Role") from exc
        self._task = asyncio.get_running_loop().create_task(self._watch())
        warnings = []
        if not await done_within(self._listed.wait(), 10.0):
            warnings.append("the pod watch is not connected: pod starts and deaths are noticed late")
        log.info("kubernetes engine ready (namespace %s, instance %s, image %s)",
                 self.settings.namespace, self.instance_id, self.image)
        return warnings

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.api is not None:
            await self.api.close()
            self.api = None
        self.connected = False

    async def problems(self, timeout: float = 5.0) -> list[str]:
        """Why sandboxes cannot start here right now (for /ready); empty when they can."""
        found = []
        if not self.connected:
            found.append("the Kubernetes pod watch is not connected")
        try:
            async with asyncio.timeout(timeout):
                assert self.api is not None
                await self.api.ping()
        except TimeoutError:
            found.append(f"the Kubernetes API does not answer within {timeout:g} s")
        except Exception as exc:
            found.append(f"the Kubernetes API does not answer: {exc}")
        return found

    def describe(self) -> dict[str, Any]:
        """For /health."""
        return {"instance": self.instance_id, "image": self.image, "namespace": self.settings.namespace,
                "watch_connected": self.connected, "transport": "tcp"}

    # -- the watch -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """List, then watch from the list's version; after any break list again (nothing missed)."""
        delay = self.retry_delay
        while True:
            try:
                assert self.api is not None
                pods, version = await self.api.list_pods()
                self._relisted(pods)
                self.connected = True
                self._listed.set()
                delay = self.retry_delay
                while True:
                    async for kind, pod in self.api.watch(version):
                        version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                        self.handle(kind, pod)
                    # The server ended the watch (its timeout): go on from the last version seen.
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                if status_of(exc) == 410:  # our version is too old: list again at once
                    log.info("pod watch: resource version expired, listing again")
                    continue
                log.warning("pod watch broke (%s); again in %g s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _relisted(self, pods: list[dict[str, Any]]) -> None:
        """The pods as listed: those we knew of that are missing went away meanwhile."""
        present = set()
        for pod in pods:
            self.handle("MODIFIED", pod)
            present.add(str(pod["metadata"]["name"]))
        for name in set(self._facts) - present:
            known = self._facts[name]
            if not known.deleted:
                self._update(dataclasses.replace(known, deleted=True))

    def handle(self, kind: str, pod: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED, DELETED (BOOKMARK carries only a version)."""
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        self._update(PodFacts.of(pod, deleted=kind == "DELETED"))

    def _update(self, facts: PodFacts) -> None:
        expected = self._uids.get(facts.name)
        if expected and facts.uid and facts.uid != expected:
            return  # an earlier pod of the same name, on its way out
        if expected is None and facts.deleted and facts.name not in self._facts:
            return  # the end of a pod we have forgotten (or never had)
        self._facts[facts.name] = facts
        waiting = self._waiters.get(facts.name)
        if waiting:
            waiting[:] = [waiter for waiter in waiting if not waiter(facts)]

    # -- pods ------------------------------------------------------------------------------------

    def facts(self, name: str) -> PodFacts | None:
        return self._facts.get(name)

    async def until(self, name: str, check: Callable[[PodFacts | None], T | None]) -> T:
        """What ``check`` returns for the pod's facts once it returns something (it may raise instead).

        Evaluated now and at each watch event for the pod: no polling.
        """
        result = check(self._facts.get(name))
        if result is not None:
            return result
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def waiter(facts: PodFacts | None) -> bool:
            if future.done():
                return True
            try:
                value = check(facts)
            except Exception as exc:
                future.set_exception(exc)
                return True
            if value is None:
                return False
            future.set_result(value)
            return True

        self._waiters.setdefault(name, []).append(waiter)
        try:
            return await future
        finally:
            waiters = self._waiters.get(name, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(name, None)

    async def create(self, pod: dict[str, Any]) -> None:
        assert self.api is not None
        name = pod["metadata"]["name"]
        self.forget(name)
        created = await self.api.create(pod)
        self._uids[name] = str((created.get("metadata") or {}).get("uid") or "")
        if self._uids[name] and (self._facts.get(name) or PodFacts(name)).uid not in ("", self._uids[name]):
            del self._facts[name]  # what the watch said meanwhile was of an earlier pod

    async def delete(self, name: str, *, grace_seconds: int = 0) -> None:
        assert self.api is not None
        self._deleting.add(name)
        await self.api.delete(name, grace_seconds)

    def deleted_by_us(self, name: str) -> bool:
        return name in self._deleting

    def forget(self, name: str) -> None:
        self._facts.pop(name, None)
        self._uids.pop(name, None)
        self._deleting.discard(name)

    async def find(self, sandbox_id: str) -> PodFacts | None:
        """The pod of ``sandbox_id`` (by its labels), as the API has it now."""
        assert self.api is not None
        pods = await self.api.find({LABEL_SANDBOX: sandbox_id})
        if not pods:
            return None
        facts = PodFacts.of(pods[0])
        self._uids[facts.name] = facts.uid
        if self._facts.get(facts.name, facts).uid != facts.uid:
            del self._facts[facts.name]
        self._facts.setdefault(facts.name, facts)
        return self._facts[facts.name]

    async def containers(self) -> list[tuple[str, str, str]]:
        """(pod name, sandbox id, instance) of every gateway pod of the namespace, whichever replica
        started it: what the gateway's orphan sweep (``gateway.sandboxes.orphans``) looks at (it
        decides by the instance and the store which of them may go)."""
        assert self.api is not None
        pods, _ = await self.api.list_pods()
        found = []
        for pod in pods:
            metadata = pod.get("metadata") or {}
            labels = metadata.get("labels") or {}
            found.append((str(metadata.get("name")), labels.get(LABEL_SANDBOX, ""), labels.get(LABEL_INSTANCE, "")))
        return found

    async def remove(self, name: str) -> None:
        await self.delete(name)


def started_or_failed(facts: PodFacts | None) -> PodFacts | None:
    """For ``until``: the facts once the kernel runs with an address; raises once it never will."""
    if facts is None:
        return None
    if facts.started:
        return facts
    if facts.stopped or facts.hopeless:
        detail = f"{facts.reason}: {facts.message}" if facts.message else facts.reason or facts.phase
        raise SandboxStartFailed(f"the sandbox's pod did not start ({detail})")
    return None


def exit_code_once_stopped(facts: PodFacts | None) -> int | None:
    """For ``until``: the kernel's exit code once the pod stopped (``GONE`` if it has none)."""
    if facts is None or not facts.stopped:
        return None
    return GONE if facts.exit_code is None else facts.exit_code


class KubernetesProvisioner(KernelProvisionerBase):
    """Runs a sandbox's kernel in its own hardened Pod."""

    namespace = Unicode("code-gateway-sandboxes", help="Namespace of the sandbox pods (and their network "
                        "policies).").tag(config=True)
    image = Unicode(help="The sandbox image (default: code-gateway/python:<gateway version>).").tag(config=True)
    image_pull_policy = Unicode("IfNotPresent", help="The pods' imagePullPolicy.").tag(config=True)
    instance_id = Unicode(
        "", help="Label value marking this gateway's pods (default: derived from the runtime directory). "
        "Replicas need distinct ids (e.g. their pod names).").tag(config=True)
    kubeconfig = Unicode("", help="A kubeconfig file (default: the pod's service account in a cluster, "
                         "else ~/.kube/config).").tag(config=True)
    context = Unicode("", help="The kubeconfig context (default: its current one).").tag(config=True)
    runtime_class = Unicode("", help="runtimeClassName of sandbox pods (gVisor's runsc, Kata...).").tag(config=True)
    gateway_namespace = Unicode(help="Namespace of the gateway pods, the only ones the sandbox pods admit "
                                "(default: the gateway's own, else the sandbox namespace).").tag(config=True)
    gateway_labels = Dict(
        {"app.kubernetes.io/name": "code-gateway"},
        help="Labels of the gateway pods, the only ones the sandbox pods admit (on the kernel ports).",
    ).tag(config=True)
    network_egress = List(
        Unicode(), ["0.0.0.0/0"], help="Where sandboxes that asked for a network (--allow-network) may "
        "connect; private and link-local ranges are always excluded.",
    ).tag(config=True)
    pod_options = Dict(help="Merged into every sandbox pod's spec, last (nodeSelector, tolerations, "
                       "priorityClassName...); it can weaken the hardening.").tag(config=True)

    @default("image")
    def _image_default(self) -> str:
        return default_image()

    @default("gateway_namespace")
    def _gateway_namespace_default(self) -> str:
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or str(self.namespace)
        except OSError:
            return str(self.namespace)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pod: str | None = None
        self._last_pod: str | None = None
        #: The sandbox (runtime) id its labels carry.
        self.sandbox_id = ""
        self._exit_code: int | None = None

    @property
    def engine(self) -> KubernetesEngine:
        owner = self.parent
        while owner is not None:
            engine = getattr(owner, "engine", None)
            if isinstance(engine, KubernetesEngine):
                return engine
            owner = getattr(owner, "parent", None)
        raise RuntimeError("KubernetesProvisioner runs under the gateway's KernelLauncher, which owns the engine")

    @property
    def has_process(self) -> bool:
        return self.pod is not None

    # -- launch ----------------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        sandbox = kwargs.pop(SANDBOX_KWARG)
        Path(kwargs.pop(SANDBOX_DIR_KWARG)).mkdir(mode=0o700, parents=True, exist_ok=True)  # connection file
        assert self.parent is not None, "a provisioner is created by its kernel manager"
        inside = transport.prepare(self.parent)
        argv = argv_in_image(transport.kernel_argv(self.kernel_spec), self.kernel_spec, CONTAINER_CONNECTION_FILE)
        env = {"PYTHONUNBUFFERED": "1", **sandbox.env, CONNECTION_ENV: json.dumps(inside),
               **transport.bootstrap_env(self.kernel_spec)}
        return {"cmd": ["tini", "-g", "--", "sh", "-c", BOOTSTRAP, "sh", *argv], "sandbox": sandbox,
                "pod_env": env}

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        engine = self.engine
        sandbox = kwargs["sandbox"]
        settings = engine.settings
        if getattr(sandbox, "image", None):
            settings = dataclasses.replace(settings, image=sandbox.image)  # chosen by the request (E2B template)
        manifest = pod_manifest(settings, sandbox, cmd, kwargs["pod_env"])
        name = manifest["metadata"]["name"]
        self._exit_code = None
        try:
            await engine.create(manifest)
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            log.warning("sandbox %s: replacing a leftover pod", sandbox.id)  # ours, from an earlier failure
            await engine.delete(name)
            await engine.until(name, lambda facts: True if facts is not None and facts.deleted else None)
            await engine.create(manifest)
        self.pod = self._last_pod = name
        self.sandbox_id = sandbox.id
        try:
            facts = await engine.until(name, started_or_failed)
        except BaseException:
            await self.cleanup()
            raise
        assert facts.ip is not None
        self.connection_info = transport.reach(self.parent, facts.ip)
        log.info("sandbox %s: pod %s started (%s)", sandbox.id, name, facts.ip)
        return self.connection_info

    # -- process-like interface ------------------------------------------------------------------

    async def poll(self) -> int | None:
        if self.pod is None:
            return 0
        if self._exit_code is not None:
            return self._exit_code
        facts = self.engine.facts(self.pod)
        if facts is None:  # not seen by the watch (yet): ask once
            facts = await self.engine.find(self.sandbox_id)
            if facts is None:
                self._exit_code = GONE
                return GONE
        code = exit_code_once_stopped(facts)
        if code is not None:
            self._exit_code = code
        return code

    async def wait(self) -> int | None:
        if self.pod is None:
            return None
        if self._exit_code is None:
            self._exit_code = await self.engine.until(self.pod, exit_code_once_stopped)
        return self._exit_code

    async def send_signal(self, signum: int) -> None:
        """SIGINT: an ``interrupt_request`` on the control channel; any other signal ends the pod."""
        if self.pod is None or self._exit_code is not None:
            return
        if signum == signal.SIGINT:
            km = self.parent
            assert km is not None
            control = km.connect_control()  # a CURVE client of the kernel, like every socket of ours
            socket = getattr(control, "socket", control)  # (not through a ZMQStream's own send queue)
            try:
                km.session.send(socket, "interrupt_request", {})
            finally:
                control.close(linger=5000)  # closed at once; ZeroMQ still delivers the message
            return
        await self.engine.delete(self.pod, grace_seconds=0 if signum == signal.SIGKILL else GRACE)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Delete the pod (whatever its state) and forget it."""
        if self.pod is None:
            return
        name, self.pod = self.pod, None
        await self.engine.delete(name)
        self.engine.forget(name)

    async def exit_reason(self) -> str:
        """Why the pod stopped: ``out_of_memory``, ``sandbox_died`` or ``kernel_died``."""
        name = self.pod or self._last_pod
        facts = self.engine.facts(name) if name else None
        if name is None or facts is None:
            return "sandbox_died"  # gone without a trace
        return facts.exit_reason(deleted_by_us=self.engine.deleted_by_us(name))

    async def usage(self) -> Usage:
        """Not measured on Kubernetes (yet): the kubelet's metrics are not read."""
        return Usage()

    # -- re-attaching ----------------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(pod=self.pod, namespace=self.engine.settings.namespace, instance_id=self.engine.instance_id,
                    image=self.engine.image, transport="tcp")
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Find the pod by its labels; reach its IP as the API reports it now."""
        await super().load_provisioner_info(provisioner_info)
        assert self.parent is not None
        self.sandbox_id = str(self.kernel_id)
        facts = await self.engine.find(self.sandbox_id)
        if facts is None or not facts.started:
            self.pod = None
            return
        self.pod = self._last_pod = facts.name
        assert facts.ip is not None
        self.connection_info = transport.reach(self.parent, facts.ip)
