"""The ``docker`` provisioner: one hardened container per sandbox, its kernel reached over ipc sockets.

    code-gateway --provisioner=docker --image=code-gateway/python:0.1.0

``KernelLauncher`` starts one ``DockerEngine`` per gateway (the docker client, the one event
stream, the replica's instance label) and names ``code-gateway-docker`` in the kernelspec, so
jupyter_client creates a ``DockerProvisioner`` per kernel, which finds the engine through its
parents (kernel manager -> launcher).

How the gateway reaches a kernel with no network and no host directory shared with it:

- The container runs ``tini -g -- sh -c <write connection file> python3 -m ipykernel_launcher -f
  /run/code-gateway/connection.json``. The connection file arrives in an environment variable
  (removed before the kernel starts) and is written to a small private tmpfs at
  ``/run/code-gateway``, where the kernel binds its ipc sockets ``k-<n>``.
- The gateway opens each socket from the container's root (``/proc/<container pid>/root``), one
  path component at a time without following symlinks, checks that it is a socket of the
  sandbox's uid, and connects through ``<sandbox_dir>/sock/k-<n>``, a link to that descriptor
  (``gateway.provisioners.sockets``): the sandbox owns ``/run/code-gateway`` and could replace
  a socket by a symlink to any socket on the host; the gateway never connects by that name.
  Nothing the sandbox writes lands on the host's disk, and it sees no host path. (A bind-mounted
  host directory would be both: a way to fill the host's disk, and files the root gateway writes
  into a directory the sandbox controls.) So the gateway runs on the engine's host, in its pid
  namespace, as root (with the usual CAP_SYS_PTRACE) or as the uid its sandboxes run as.
- Or, with ``--DockerProvisioner.transport=tcp``, over TCP with CurveZMQ (``transport``) on a
  Docker network only gateways reach (``kernel_network``): for gateways on other hosts.

Hardening (each also proven by tests/provisioners/test_docker.py): no network (``none``), all
capabilities dropped, no-new-privileges, Docker's default seccomp profile, read-only root,
size-limited tmpfs for /tmp and /home/sandbox, non-root user, pids/memory/swap/CPU limits,
private IPC namespace, bounded container log.

Each sandbox runs under its isolation (``gateway.provisioners.isolation``): ``runc``, as above,
or ``gvisor``: the same container under runsc, whose own kernel stands between the sandbox and
the host's; there the socket directory is a host tmpfs of the gateway's (see that module).

Why a container stopped (``exit_reason``): ``out_of_memory`` (the memory cgroup killed it),
``sandbox_died`` (killed or removed from outside the gateway), else ``kernel_died``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, CaselessStrEnum, Dict, List, Unicode, default

from gateway import __version__
from gateway.errors import SandboxStartFailed
from gateway.provisioners.base import SANDBOX_DIR_KWARG, SANDBOX_KWARG, argv_in_image
from gateway.provisioners import transport
from gateway.provisioners.docker_events import ContainerEvents
from gateway.provisioners.isolation import CONTAINER_DIR, GVISOR, HOME, ISOLATIONS, RUNC, Isolation, isolation_named
from gateway.provisioners.kernel_network import KernelNetwork, KernelNetworkError
from gateway.provisioners.mounts import mounting_problem
from gateway.provisioners.runsc import RunscError, RunscSandbox
from gateway.provisioners.usage import Usage
from gateway.provisioners.sockets import (
    Identity,
    SocketRefused,
    identities_from_record,
    identities_to_record,
    sockets_of,
)
from gateway.tasks import done_within, stop_tasks

log = logging.getLogger(__name__)

LABEL_SANDBOX = "code-gateway.sandbox"
LABEL_OWNER = "code-gateway.owner"
LABEL_INSTANCE = "code-gateway.instance"

#: Inside the container: the kernel's connection file, in its socket directory (``CONTAINER_DIR``).
CONTAINER_CONNECTION_FILE = f"{CONTAINER_DIR}/connection.json"
CONNECTION_ENV = "CODE_GATEWAY_CONNECTION"
#: The image's ``sandbox`` user.
SANDBOX_UID = 1000
#: How long a container whose runtime failed to deliver a signal may take to be seen stopped (s).
SIGNAL_FAILED_WAIT = 10.0
#: Seconds a container whose kernel sockets were refused at start has to stop, if its kernel died
#: while starting: then the start fails with why it died, not with the refusal.
DYING_KERNEL_WAIT = 5.0
#: The exit code we report for a container that no longer exists.
GONE = -1
#: Writes the connection file, drops it from the environment, then becomes the kernel.
BOOTSTRAP = f'printf %s "${CONNECTION_ENV}" > {CONTAINER_CONNECTION_FILE} && unset {CONNECTION_ENV} && exec "$@"'
#: Signals that are not meant to stop the kernel (interrupts).
HARMLESS_SIGNALS = frozenset({int(signal.SIGINT)})


def default_image() -> str:
    return f"code-gateway/python:{__version__}"


def instance_id_for(runtime_dir: str | os.PathLike[str]) -> str:
    """A stable id for an engine outside a gateway (no replica id): the same runtime dir, the same id."""
    return hashlib.sha1(os.path.abspath(runtime_dir).encode()).hexdigest()[:12]


def replica_id_of(parent: Any) -> str:
    """The id of the replica an engine serves (its launcher's ``instance_id``: the gateway's ``--replica-id``,
    which ``DockerProvisioner.instance_id`` sets when that is not given); "" outside a gateway."""
    return str(getattr(parent, "instance_id", "") or "")


def container_name(sandbox_id: str) -> str:
    return f"code-gateway-{sandbox_id}"


def create_container(client: Any, options: dict[str, Any]) -> str:
    """Create a container from ``containers.create``'s keyword arguments; its id.

    The same request as ``client.containers.create(**options)`` (the SDK's own translation of
    those arguments into the API's body and host config), without the inspect that method adds
    to build a ``Container``: one engine round trip less on every start, the launch inspects the
    started container anyway.
    """
    from docker.models.containers import _create_container_args  # type: ignore[attr-defined]  # (private: what containers.create itself calls)

    created = client.api.create_container(**_create_container_args({**options, "version": client.api._version}))
    return str(created["Id"])


class SandboxImageMissing(SandboxStartFailed):
    """The configured sandbox image is not on the engine (a message a client may see)."""


#: Seconds a stopped container's reason waits for its ``die`` event: it comes in milliseconds, but
#: from a loaded engine it may be late, and the reason read before it can miss an OOM kill (2 s
#: were once too few in CI: a gVisor sandbox killed for memory at its start said kernel_died).
SETTLE_SECONDS = 10.0
#: Seconds a container SIGKILLed by no one we know of (exit 137, no ``kill`` event) waits after its
#: ``die`` for an ``oom`` that may trail it: the shim watches the cgroup's OOM kills apart from the
#: task's exit, and under load tells them later (CI saw a gVisor sandbox killed for memory at its
#: start say kernel_died, its die event in and not yet its oom).
OOM_AFTER_DIE_SECONDS = 3.0


@dataclasses.dataclass
class ContainerFacts:
    """What the event stream told us about one container."""

    exit_code: int | None = None
    oom: bool = False
    #: Signals sent through the Docker API (``docker kill``/``stop`` and our own interrupts).
    signals: set[int] = dataclasses.field(default_factory=set)

    @property
    def killed_from_outside(self) -> bool:
        return bool(self.signals - HARMLESS_SIGNALS)


class DockerEngine:
    """What all sandboxes of one gateway share: the docker client, one event stream, the waiters.

    Every method runs in the event loop's thread; blocking SDK calls go through ``call``, on
    threads of the engine's own (never the loop's default executor, which others share and which
    a slow engine must not exhaust). Nothing that a sandbox controls runs on them: in-sandbox
    tools are read and written on the loop (``gateway.sandboxes.commands``).
    """

    def __init__(self, *, base_url: str, instance_id: str, image: str, pool_size: int = 32,
                 threads: int = 16, kernel_network: KernelNetwork | None = None,
                 docker_runtimes: dict[str, str] | None = None,
                 scratch_dir: str | os.PathLike[str] | None = None, runsc: str = "runsc") -> None:
        self.base_url = base_url
        #: The runsc program, for what runs inside gVisor sandboxes (``gateway.provisioners.runsc``).
        self.runsc = runsc
        self.instance_id = instance_id
        self.image = image
        #: Isolation -> the name of its Docker runtime on this engine.
        self.docker_runtimes = {RUNC: "runc", GVISOR: "runsc", **(docker_runtimes or {})}
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        #: Isolation -> why sandboxes cannot run under it here (found at ``start``).
        self.unavailable: dict[str, str] = {}
        self.pool_size = pool_size
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="docker")
        #: Where new kernels listen when the transport is tcp; None: ipc.
        self.kernel_network = kernel_network
        self.client: Any = None
        self.cpus = 0
        self.events: ContainerEvents | None = None
        self._facts: dict[str, ContainerFacts] = {}
        #: Containers of other replicas this one re-attached (it took their sandboxes over): their
        #: events matter here too.
        self._adopted: set[str] = set()
        self._waiters: dict[str, set[asyncio.Future[int]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def configured(cls, parent: Any, runtime_dir: str | os.PathLike[str]) -> DockerEngine:
        """An engine set up as the operator configured ``DockerProvisioner`` for ``parent``; its containers
        labelled with the replica's id (``replica_id_of``)."""
        settings = DockerProvisioner(parent=parent)
        network = None
        if settings.transport == "tcp":
            network = KernelNetwork(name=settings.kernel_network, bridge=settings.kernel_bridge,
                                    peers=settings.kernel_peers, firewall=settings.host_firewall)
        return cls(
            base_url=settings.docker_host,
            instance_id=replica_id_of(parent) or settings.instance_id or instance_id_for(runtime_dir),
            image=settings.image,
            kernel_network=network,
            docker_runtimes={RUNC: settings.runc_runtime, GVISOR: settings.gvisor_runtime},
            scratch_dir=runtime_dir,
            runsc=settings.runsc_command,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def _client(self) -> Any:
        import docker

        if self.base_url:
            return docker.DockerClient(base_url=self.base_url, max_pool_size=self.pool_size)
        return docker.from_env(max_pool_size=self.pool_size)

    async def start(self) -> list[str]:
        """Connect, check the image, subscribe to events; returns warnings for /health."""
        warnings: list[str] = []
        try:
            self.client = await self.call(self._client)
            info = await self.call(self.client.info)
        except Exception as exc:
            raise RuntimeError(f"no Docker engine answers ({exc}); start Docker or use --provisioner=local") from exc
        self.cpus = int(info.get("NCPU") or os.cpu_count() or 1)
        self.unavailable = self._isolation_problems(set(info.get("Runtimes") or {}))
        if self.kernel_network is not None:
            try:
                await self.kernel_network.ensure(self)
            except BaseException:
                await self.stop()
                raise
        if not await self.image_present():
            message = f"the sandbox image {self.image} is missing: build it with `make images`"
            log.warning(message)
            warnings.append(message)
        self.events = ContainerEvents(
            await self.call(self._client),
            # Every gateway's containers: a container this replica takes over keeps the label of the one
            # that started it (labels cannot change). ``handle_event`` keeps what concerns us.
            {"label": LABEL_SANDBOX},
            loop=asyncio.get_running_loop(),
            on_event=self.handle_event,
            on_reconnect=self.recheck,
        )
        self.events.start()
        if not await self.events.wait_subscribed(10.0):
            warnings.append("the Docker event stream is not connected: container deaths are noticed late")
        log.info("docker engine ready (instance %s, image %s)", self.instance_id, self.image)
        return warnings

    def _isolation_problems(self, registered: set[str]) -> dict[str, str]:
        problems = {}
        for isolation in ISOLATIONS:
            runtime = self.docker_runtimes[isolation]
            if runtime not in registered:
                problems[isolation] = (f"the Docker engine has no runtime {runtime!r} (registered: "
                                       f"{', '.join(sorted(registered)) or 'none'})")
        if GVISOR not in problems and self.kernel_network is not None:
            problems[GVISOR] = ("the tcp transport needs a network in the sandbox, and runsc runs sandboxes with "
                                "--network=none (use the ipc transport for gvisor sandboxes)")
        if GVISOR not in problems and self.scratch_dir is not None:
            # Its socket directory is a tmpfs the gateway mounts (gateway.provisioners.isolation).
            self.scratch_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            problem = mounting_problem(self.scratch_dir)
            if problem is not None:
                problems[GVISOR] = problem
        if GVISOR in problems:
            log.info("gvisor isolation is not available: %s", problems[GVISOR])
        return problems

    def isolation(self, name: str) -> Isolation:
        return isolation_named(name, docker_runtime=self.docker_runtimes[name])

    async def stop(self) -> None:
        if self.events is not None:
            await self.events.stop()
            await self.call(self.events.client.close)
            self.events = None
        await stop_tasks(list(self._tasks), within=10.0, what="docker engine")
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        if self.client is not None:
            await self.call(self.client.close)
            self.client = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def problems(self, timeout: float = 5.0) -> list[str]:
        """Why sandboxes cannot start here right now (for /ready); empty when they can."""
        found = []
        if not (self.events and self.events.connected):
            found.append("the Docker engine's event stream is not connected")
        try:
            async with asyncio.timeout(timeout):
                present = await self.image_present()
        except TimeoutError:
            found.append(f"the Docker engine does not answer within {timeout:g} s")
        except Exception as exc:
            found.append(f"the Docker engine does not answer: {exc}")
        else:
            if not present:
                found.append(f"the sandbox image {self.image} is missing: build it with `make images`")
        return found

    def describe(self) -> dict[str, Any]:
        """For /health."""
        return {
            "instance": self.instance_id,
            "image": self.image,
            "events_connected": bool(self.events and self.events.connected),
            "transport": "tcp" if self.kernel_network is not None else "ipc",
            **({"kernel_network": self.kernel_network.describe()} if self.kernel_network is not None else {}),
            "runtimes": {isolation: self.docker_runtimes[isolation] for isolation in ISOLATIONS},
        }

    # -- docker calls ----------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking docker SDK call on the engine's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def open_init(self, container_id: str) -> int | None:
        """An ``O_PATH`` descriptor of the running container's init in /proc (checked to be it
        after it was opened: no reused pid), or None if the container does not run."""
        state = await self.state(container_id)
        if state is None or not state["Running"]:
            return None
        pid = int(state["Pid"])
        try:
            process = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        state = await self.state(container_id)
        if state is None or not state["Running"] or int(state["Pid"]) != pid:
            os.close(process)
            return None
        return process

    async def runsc_sandbox(self, container_id: str) -> RunscSandbox:
        """runsc's handle on a gVisor container, found through its Sentry (the container's init on the host)."""
        process = await self.open_init(container_id)
        if process is None:
            raise RunscError("the sandbox's container stopped")
        try:
            return RunscSandbox.of(container_id, process, runsc=self.runsc)
        finally:
            os.close(process)

    async def image_present(self) -> bool:
        import docker.errors

        try:
            await self.call(self.client.images.get, self.image)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """What the engine knows of the container, or None if it is gone."""
        import docker.errors

        try:
            attrs: dict[str, Any] = await self.call(self.client.api.inspect_container, container_id)
        except docker.errors.NotFound:
            return None
        return attrs

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The container's ``State`` (``Running``, ``ExitCode``, ``OOMKilled``, ``Pid``), or None if gone."""
        attrs = await self.inspect(container_id)
        if attrs is None:
            return None
        state: dict[str, Any] = attrs["State"]
        return state

    async def running_container(self, sandbox_id: str) -> str | None:
        """The id of the sandbox's running container (found by our labels), or None."""
        containers = await self.call(
            self.client.api.containers,
            filters={"label": [f"{LABEL_SANDBOX}={sandbox_id}", f"{LABEL_INSTANCE}={self.instance_id}"],
                     "status": "running"},
        )
        return str(containers[0]["Id"]) if containers else None

    def labels(self, sandbox: Any) -> dict[str, str]:
        return {LABEL_SANDBOX: sandbox.id, LABEL_OWNER: sandbox.owner, LABEL_INSTANCE: self.instance_id}

    async def containers(self) -> list[tuple[str, str, str]]:
        """(container id, sandbox id, instance) of every gateway container on the engine, running or not."""
        found = await self.call(self.client.api.containers, all=True, filters={"label": LABEL_SANDBOX})
        return [(c["Id"], (c.get("Labels") or {}).get(LABEL_SANDBOX, ""), (c.get("Labels") or {}).get(LABEL_INSTANCE, ""))
                for c in found]

    def adopt(self, container_id: str) -> None:
        """A container another replica started is this one's now: follow its events."""
        self._adopted.add(container_id)

    async def remove(self, container_id: str) -> None:
        import docker.errors

        try:
            await self.call(self.client.api.remove_container, container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    # -- deaths ----------------------------------------------------------------------------------

    def facts(self, container_id: str) -> ContainerFacts:
        return self._facts.get(container_id) or ContainerFacts()

    def forget(self, container_id: str) -> None:
        self._facts.pop(container_id, None)
        self._adopted.discard(container_id)

    async def wait(self, container_id: str) -> int:
        """The exit code once the container stopped (``GONE`` if removed); costs no thread."""
        known = self.facts(container_id).exit_code
        if known is not None:
            return known
        future = self._subscribe(container_id)
        try:
            # The container may have died before we subscribed: look after subscribing.
            state = await self.state(container_id)
            if state is None:
                return GONE
            if not state["Running"]:
                return int(state["ExitCode"])
            return await future
        finally:
            self._unsubscribe(container_id, future)

    async def settled(self, container_id: str, timeout: float) -> bool:
        """Wait (bounded) until the stream delivered the container's ``die``: its events are all in."""
        if self.facts(container_id).exit_code is None and self.events is not None and self.events.connected:
            future = self._subscribe(container_id)
            try:
                async with asyncio.timeout(timeout):
                    await future
            except TimeoutError:
                pass
            finally:
                self._unsubscribe(container_id, future)
        return self.facts(container_id).exit_code is not None

    def _subscribe(self, container_id: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(container_id, set()).add(future)
        return future

    def _unsubscribe(self, container_id: str, future: asyncio.Future[int]) -> None:
        futures = self._waiters.get(container_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[container_id]

    def _resolve(self, container_id: str, exit_code: int) -> None:
        for future in self._waiters.get(container_id, ()):
            if not future.done():
                future.set_result(exit_code)

    def handle_event(self, event: dict[str, Any]) -> None:
        """One container event from the stream (called in the loop's thread)."""
        actor = event.get("Actor") or {}
        container_id = actor.get("ID") or event.get("id") or ""
        action = event.get("Action") or event.get("status") or ""
        attributes = actor.get("Attributes") or {}
        if not (attributes.get(LABEL_INSTANCE) == self.instance_id or container_id in self._adopted
                or container_id in self._waiters or container_id in self._facts):
            return  # another gateway's container (or another replica's, not taken over by this one)
        if action == "destroy":
            facts = self._facts.pop(container_id, None)
            self._resolve(container_id, GONE if facts is None or facts.exit_code is None else facts.exit_code)
            return
        facts = self._facts.setdefault(container_id, ContainerFacts())
        if action == "oom":
            facts.oom = True
        elif action == "kill":
            try:
                facts.signals.add(int(attributes.get("signal", 0)))
            except ValueError:
                facts.signals.add(-1)
        elif action == "die":
            try:
                facts.exit_code = int(attributes.get("exitCode", GONE))
            except ValueError:
                facts.exit_code = GONE
            log.debug("container %s died (exit %s)", container_id[:12], facts.exit_code)
            self._resolve(container_id, facts.exit_code)

    def recheck(self) -> None:
        """After the stream reconnected: look again at every container someone waits for."""
        for container_id in list(self._waiters):
            task = asyncio.get_running_loop().create_task(self._recheck(container_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _recheck(self, container_id: str) -> None:
        try:
            state = await self.state(container_id)
        except Exception:
            log.warning("container %s: could not re-check its state", container_id[:12], exc_info=True)
            return
        if state is None:
            self._resolve(container_id, GONE)
        elif not state["Running"]:
            self._resolve(container_id, int(state["ExitCode"]))


def engine_of(provisioner: KernelProvisionerBase) -> DockerEngine:
    """The ``DockerEngine`` a provisioner's parents own (kernel manager -> launcher)."""
    owner = provisioner.parent
    while owner is not None:
        engine = getattr(owner, "engine", None)
        if isinstance(engine, DockerEngine):
            return engine
        owner = getattr(owner, "parent", None)
    raise RuntimeError(f"{type(provisioner).__name__} runs under the gateway's KernelLauncher, which owns the "
                       "DockerEngine")


class DockerProvisioner(KernelProvisionerBase):
    """Runs a sandbox's kernel in its own hardened container."""

    image = Unicode(help="The sandbox image (default: code-gateway/python:<gateway version>).").tag(config=True)
    docker_host = Unicode(
        "", help="Docker engine URL (e.g. unix:///var/run/docker.sock); default: DOCKER_HOST or the local socket."
    ).tag(config=True)
    instance_id = Unicode(
        "", help="The replica id (an older name for --replica-id, used when that is not given): the label value "
        "marking the containers this gateway starts."
    ).tag(config=True)
    network = Unicode(
        "bridge", help="Docker network for sandboxes that asked for network access (only where "
        "--allow-network permits it); all others get none."
    ).tag(config=True)
    user = Unicode(
        "", help="uid:gid the kernel runs as (default: 1000:1000, the image's sandbox user, when the gateway "
        "runs as root; else the gateway's own uid:gid, so it can reach the kernel's sockets)."
    ).tag(config=True)
    log_max_size = Unicode("1m", help="Largest container log kept on the host (json-file max-size).").tag(config=True)
    transport = CaselessStrEnum(
        ["ipc", "tcp"], default_value="ipc",
        help="How the gateway reaches kernels: ipc (sockets inside the container, reached through /proc: no "
        "network at all, the gateway on the engine's host), or tcp (CurveZMQ-encrypted TCP on kernel_network, "
        "for gateways on other hosts).",
    ).tag(config=True)
    kernel_network = Unicode(
        "code-gateway-kernels", help="tcp: the Docker network kernels listen on; created internal and with "
        "inter-container traffic disabled if missing (an existing one must be so).",
    ).tag(config=True)
    kernel_bridge = Unicode(
        "cg-kernels", help="tcp: the bridge interface of kernel_network when the gateway creates it (at most "
        "15 characters).",
    ).tag(config=True)
    kernel_peers = List(
        Unicode(), help="tcp: CIDRs of the other gateway hosts that may reach the kernel ports (host firewall).",
    ).tag(config=True)
    host_firewall = Bool(
        True, help="tcp: at start, firewall this host for kernel_network (iptables, as root): sandboxes reach no "
        "host service, kernel_peers reach the kernel ports. Turn it off where the engine is on another host, and "
        "run `python -m gateway.provisioners.kernel_network BRIDGE PEER...` there.",
    ).tag(config=True)
    run_options = Dict(
        help="Extra keyword arguments for docker's containers.create, applied last, so they can also weaken "
        "the hardening (e.g. shm_size=256m).",
    ).tag(config=True)
    runc_runtime = Unicode("runc", help="The Docker runtime of sandboxes with isolation runc.").tag(config=True)
    gvisor_runtime = Unicode(
        "runsc", help="The Docker runtime of sandboxes with isolation gvisor: runsc registered with "
        "--platform=ptrace --network=none --host-uds=all (deploy/host/ensure-docker.sh --runsc does it)."
    ).tag(config=True)
    runsc_command = Unicode(
        "runsc", help="The runsc program the gateway runs to list and signal what is exec'd inside gVisor sandboxes "
        "(contexts' kernels, commands, tools; its state directory is the one the engine's runtime gave the sandbox)."
    ).tag(config=True)

    @default("image")
    def _image_default(self) -> str:
        return default_image()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.container_id: str | None = None
        self.sandbox_dir: Path | None = None
        self._last_container_id: str | None = None
        self._exit_code: int | None = None
        #: The container's init, as the host sees it (its cgroup and root are reached through it).
        self._pid: int | None = None
        #: The kernel network when this kernel is reached over tcp (None: ipc).
        self._network: KernelNetwork | None = None
        #: How its container is isolated (the sandbox's ``isolation``; recorded for re-attaching).
        self.isolation_name = RUNC
        self._started_pids = 0

    # -- where things are ------------------------------------------------------------------------

    @property
    def engine(self) -> DockerEngine:
        return engine_of(self)

    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    def _links(self) -> Path:
        """The directory of links to the kernel's sockets (only the gateway writes there)."""
        assert self.sandbox_dir is not None
        return self.sandbox_dir / "sock"

    async def _attach_sockets(self, pid: int, *, launching: bool, expect: dict[int, Identity] | None = None) -> None:
        """Hold the kernel's sockets by descriptor, reached from the container's root without following symlinks.

        At launch this waits until the kernel has bound them all; at re-attach they must be there
        already and be the very sockets recorded at launch (``expect``).
        """
        assert self.container_id is not None and self.parent is not None
        try:
            process = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise SocketRefused("the sandbox's container stopped") from None
        try:
            # Still the container's init, so the pid was not reused: ``process`` now names it for good.
            state = await self.engine.state(self.container_id)
            if state is None or not state["Running"] or int(state["Pid"]) != pid:
                raise SocketRefused("the sandbox's container stopped")

            isolation, sandbox_dir = self.isolation, self.sandbox_dir
            assert sandbox_dir is not None

            def directory() -> int:
                return isolation.socket_directory(process, sandbox_dir)

            sockets, prefix, owner = sockets_of(self.parent), self._links() / "k", self._run_as()[0]
            ports = list(self.parent.ports)
            if launching:
                await sockets.attach_when_bound(directory, prefix, ports, owner=owner)
            else:
                fd = directory()
                try:
                    sockets.attach(fd, prefix, ports, owner=owner, expect=expect)
                finally:
                    os.close(fd)
            self._pid = pid
        finally:
            os.close(process)

    def _detach_sockets(self) -> None:
        """Once the container is gone, no connect may reach its sockets (or a reused pid's) again."""
        self._pid = None
        sockets_of(self.parent).detach()

    def _run_as(self) -> tuple[int, int]:
        if self.user:
            uid, _, gid = self.user.partition(":")
            return int(uid), int(gid or uid)
        if os.geteuid() == 0:
            return SANDBOX_UID, SANDBOX_UID
        return os.getuid(), os.getgid()

    # -- launch ----------------------------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        return self.engine.isolation(self.isolation_name)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        sandbox = kwargs.pop(SANDBOX_KWARG)
        self.sandbox_dir = Path(kwargs.pop(SANDBOX_DIR_KWARG))
        self.sandbox_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._detach_sockets()
        self.isolation_name = getattr(sandbox, "isolation", None) or RUNC
        uid, gid = self._run_as()
        self.isolation.prepare(self.sandbox_dir, uid=uid, gid=gid)
        km = self.parent
        assert km is not None, "a provisioner is created by its kernel manager"
        self._network = self.engine.kernel_network
        if self._network is not None:
            inside = transport.prepare(km)
            return {"cmd": self._kernel_cmd(transport.kernel_argv(self.kernel_spec)), "sandbox": sandbox,
                    "connection": inside}
        km.ip = str(self._links() / "k")
        km.write_connection_file()
        self.connection_info = km.get_connection_info()
        inside = {**self.connection_info, "ip": f"{CONTAINER_DIR}/k"}
        inside["key"] = inside["key"].decode() if isinstance(inside["key"], bytes) else inside["key"]
        inside.pop("kernel_name", None)
        return {"cmd": self._kernel_cmd(), "sandbox": sandbox, "connection": inside}

    def _kernel_cmd(self, argv: list[str] | None = None) -> list[str]:
        """The kernelspec's argv, run by tini through the bootstrap (python3 stays the image's)."""
        argv = argv_in_image(argv or self.kernel_spec.argv, self.kernel_spec, CONTAINER_CONNECTION_FILE)
        return ["tini", "-g", "--", "sh", "-c", BOOTSTRAP, "sh", *argv]

    def container_options(self, sandbox: Any, cmd: list[str], connection: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` for ``sandbox``: the hardening lives here."""
        from docker.types import LogConfig

        limits = sandbox.resources
        self._started_pids = int(limits.pids)
        uid, gid = self._run_as()
        disk = f"size={int(limits.disk_mb)}m"
        cpus = min(float(limits.cpu), float(self.engine.cpus or limits.cpu))
        environment = {
            "PYTHONUNBUFFERED": "1",
            **sandbox.env,
            CONNECTION_ENV: json.dumps(connection),
            **(transport.bootstrap_env(self.kernel_spec) if self._network is not None else {}),
        }
        if getattr(sandbox, "image", None):
            self.image = sandbox.image  # chosen by the request (an E2B template); recorded for re-attaching
        options: dict[str, Any] = {
            "image": self.image,
            "name": container_name(sandbox.id),
            "entrypoint": cmd[:3],
            "command": cmd[3:],
            "user": f"{uid}:{gid}",
            "working_dir": HOME,
            "hostname": "sandbox",
            "environment": environment,
            "labels": self.engine.labels(sandbox),
            "network_mode": self._network_mode(limits),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {
                "/tmp": f"{disk},mode=1777,exec,nosuid,nodev",
                HOME: f"{disk},uid={uid},gid={gid},mode=0700,exec,nosuid,nodev",
            },
            "ipc_mode": "private",
            "mem_limit": f"{int(limits.memory_mb)}m",
            "memswap_limit": f"{int(limits.memory_mb)}m",
            "nano_cpus": int(cpus * 1e9),
            "oom_kill_disable": False,
            "oom_score_adj": 500,
            "auto_remove": False,
            "restart_policy": {"Name": "no"},
            "init": False,
            "stdin_open": False,
            "tty": False,
            "log_config": LogConfig(type="json-file", config={"max-size": self.log_max_size, "max-file": "1"}),
        }
        assert self.sandbox_dir is not None
        isolated = self.isolation.container_options(limits, self.sandbox_dir, uid=uid, gid=gid)
        options.update({**isolated, "tmpfs": {**options["tmpfs"], **isolated.get("tmpfs", {})}})
        options.update(self.run_options)
        return options

    def _network_mode(self, limits: Any) -> str:
        if self._network is not None:
            return self._network.name  # and ``network`` too if allowed: joined before the start
        return str(self.network) if limits.network else "none"

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        import docker.errors

        sandbox = kwargs["sandbox"]
        engine = self.engine
        options = self.container_options(sandbox, cmd, kwargs["connection"])
        self._exit_code = None
        try:
            container_id = await self._create(options)
        except docker.errors.ImageNotFound:
            raise SandboxImageMissing(f"the sandbox image {self.image} is missing: build it with `make images`") from None
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # A container of this sandbox survived an earlier failure: it is ours, replace it.
            log.warning("sandbox %s: replacing a leftover container", sandbox.id)
            await engine.remove(options["name"])
            container_id = await self._create(options)
        self.container_id = self._last_container_id = container_id
        try:
            if self._network is not None and sandbox.resources.network:
                await engine.call(engine.client.api.connect_container_to_network, self.container_id, self.network)
            await engine.call(engine.client.api.start, self.container_id)
            attrs = await engine.inspect(self.container_id)
            state = attrs["State"] if attrs is not None else None
            if state is None or not state["Running"]:
                log.warning("sandbox %s: the container stopped at once: %s", sandbox.id, await self._log_tail())
                raise SandboxStartFailed(f"the sandbox's container stopped at once ({await self.exit_reason()})")
            if self._network is not None:
                self._pid = self._local_pid(int(state["Pid"]))
                self.connection_info = transport.reach(self.parent, self._network.address(attrs or {}))
            else:
                try:
                    await self._attach_sockets(int(state["Pid"]), launching=True)
                except SocketRefused as refused:
                    if await self._stops_within(DYING_KERNEL_WAIT):  # it died while starting (say, out of memory)
                        raise SandboxStartFailed(
                            f"its kernel stopped before it answered ({await self.exit_reason()})") from None
                    log.warning("sandbox %s: refused its kernel's sockets: %s", sandbox.id, refused)
                    raise SandboxStartFailed("the sandbox's kernel sockets are not what it bound") from None
        except BaseException:
            await self.cleanup()
            raise
        log.info("sandbox %s: container %s started", sandbox.id, self.container_id[:12])
        return self.connection_info

    async def _create(self, options: dict[str, Any]) -> str:
        """``create_container`` (the new container's id), leaving no container behind if the launch is cancelled meanwhile.

        The engine goes on creating it in the executor's thread whatever happens to our await:
        on cancellation, wait for it and remove what it made.
        """
        engine = self.engine
        creating = asyncio.ensure_future(engine.call(create_container, engine.client, options))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            try:
                await engine.remove(await creating)
            except Exception:  # nothing was created, or it cannot go now (the next start's sweep removes it)
                log.debug("a cancelled container create left something behind", exc_info=True)
            raise

    async def _log_tail(self) -> str:
        try:
            logs = await self.engine.call(self.engine.client.api.logs, self.container_id, tail=5)
        except Exception:
            return "(no log)"
        return logs.decode(errors="replace").strip()[-500:] or "(no log)"

    # -- process-like interface ------------------------------------------------------------------

    def _stopped(self, exit_code: int) -> int:
        self._exit_code = exit_code
        self._detach_sockets()
        return exit_code

    async def poll(self) -> int | None:
        if self.container_id is None:
            return 0
        if self._exit_code is not None:
            return self._exit_code
        known = self.engine.facts(self.container_id).exit_code
        if known is not None:
            return self._stopped(known)
        state = await self.engine.state(self.container_id)
        if state is None:
            return self._stopped(GONE)
        if state["Running"]:
            return None
        return self._stopped(int(state["ExitCode"]))

    async def _stops_within(self, seconds: float) -> bool:
        """Whether the container stops within ``seconds`` (a kernel that died while starting: under
        gVisor its container outlives it a moment, while the Sentry exits)."""
        return await done_within(self.wait(), seconds)

    async def wait(self) -> int | None:
        if self.container_id is None:
            return None
        if self._exit_code is not None:
            return self._exit_code
        return self._stopped(await self.engine.wait(self.container_id))

    async def send_signal(self, signum: int) -> None:
        """Signal the container's init (tini), which passes it on to the kernel's process group."""
        import docker.errors

        if self.container_id is None or self._exit_code is not None:
            return
        container_id = self.container_id
        try:
            await self.engine.call(self.engine.client.api.kill, container_id, signal=int(signum))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running any more
                return
            # The runtime could not deliver it: so answers runsc whose Sentry is dying (a sandbox
            # that exhausted its host task budget). Dead is what the signal asked for; else raise.
            try:
                async with asyncio.timeout(SIGNAL_FAILED_WAIT):  # (wait_for can swallow a cancellation)
                    await self.engine.wait(container_id)
            except TimeoutError:
                raise exc from None
            log.info("container %s stopped while being signalled (%s)", container_id[:12], exc.explanation)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the container (whatever its state) and forget it."""
        self._detach_sockets()
        if self.container_id is None:
            return
        container_id, self.container_id = self.container_id, None
        await self.engine.remove(container_id)
        self.engine.forget(container_id)

    async def update_limits(self, limits: Any) -> None:
        """Apply new CPU, memory (and swap) and pids limits to the running container.

        For the warm pool: a sandbox started with the pool's profile is fitted to the request
        that claims it. Docker changes these live; the tmpfs sizes and network cannot change.
        """
        assert self.container_id is not None
        if not self.isolation.live_pids and int(limits.pids) != self._started_pids:
            raise SandboxStartFailed(f"the process limit of a {self.isolation_name} sandbox is fixed when it starts")
        cpus = min(float(limits.cpu), float(self.engine.cpus or limits.cpu))
        memory = int(limits.memory_mb) << 20
        body = {"Memory": memory, "MemorySwap": memory, "NanoCpus": int(cpus * 1e9),
                **self.isolation.pids_update(int(limits.pids))}
        # The SDK's update_container knows neither NanoCpus nor PidsLimit; the engine's API does.
        api = self.engine.client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{self.container_id}/update"
        response = await self.engine.call(api.post, url, json=body)
        response.raise_for_status()

    async def usage(self) -> Usage:
        """What the container uses: its cgroup's CPU, memory and pids, and its two tmpfs' fill."""
        pid = self._pid
        if pid is None or self._exit_code is not None:
            return Usage()
        return self.isolation.usage(pid)

    async def exit_reason(self) -> str:
        """Why the container stopped: ``out_of_memory``, ``sandbox_died`` or ``kernel_died``."""
        container_id = self.container_id or self._last_container_id
        if container_id is None:
            return "kernel_died"
        engine = self.engine
        state = await engine.state(container_id)
        if state is None:
            return "sandbox_died"  # removed from outside
        settled = await engine.settled(container_id, timeout=SETTLE_SECONDS)
        if not state.get("OOMKilled"):
            # Read before the die event, a container still being torn down does not yet say it was
            # OOM-killed (seen under gVisor): once it has settled, its state is final (and if it has
            # not, the latest state is still the best there is).
            state = await engine.state(container_id) or state
        facts = engine.facts(container_id)
        if state.get("OOMKilled") or facts.oom:
            return "out_of_memory"
        if facts.killed_from_outside:
            return "sandbox_died"
        if settled and int(state.get("ExitCode", 0)) == 128 + signal.SIGKILL \
                and await self._oom_trailing_die(container_id):
            return "out_of_memory"
        if not settled and int(state.get("ExitCode", 0)) in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
            return "sandbox_died"  # no events to tell: a signal's exit code is our best guess
        return "kernel_died"

    async def _oom_trailing_die(self, container_id: str) -> bool:
        """Whether an ``oom`` event came after the container's ``die`` (within ``OOM_AFTER_DIE_SECONDS``),
        or its state says OOM-killed by then."""
        engine = self.engine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OOM_AFTER_DIE_SECONDS
        while not engine.facts(container_id).oom and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return engine.facts(container_id).oom or bool((await engine.state(container_id) or {}).get("OOMKilled"))

    # -- re-attaching ----------------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(
            container_id=self.container_id,
            image=self.image,
            isolation=self.isolation_name,
            instance_id=self.engine.instance_id,
            sandbox_dir=str(self.sandbox_dir) if self.sandbox_dir else None,
            sockets=identities_to_record(sockets_of(self.parent).identities),
            transport="tcp" if self._network is not None else "ipc",
            kernel_network=self._network.name if self._network is not None else None,
            # Another replica taking the sandbox over may reach it from a directory of its own: runc's
            # sockets are found through /proc, tcp's at an address. gVisor's are in a tmpfs mounted in
            # *this* sandbox_dir, bound into the container: that directory is the way in.
            relocatable=self._network is not None or self.isolation_name != GVISOR,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = self._last_container_id = provisioner_info.get("container_id")
        self.image = provisioner_info.get("image") or self.image
        self.isolation_name = provisioner_info.get("isolation") or RUNC
        if provisioner_info.get("sandbox_dir"):
            self.sandbox_dir = Path(provisioner_info["sandbox_dir"])
        if self.container_id is None or self.sandbox_dir is None:
            self.container_id = None
            return
        self.engine.adopt(self.container_id)
        if provisioner_info.get("transport") == "tcp":
            await self._reattach_tcp(str(provisioner_info.get("kernel_network") or ""))
            return
        state = await self.engine.state(self.container_id)
        if state is not None and state["Running"]:
            self.sandbox_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Refused (SocketRefused) if the sandbox replaced a socket while no gateway watched.
            await self._attach_sockets(int(state["Pid"]), launching=False,
                                       expect=identities_from_record(provisioner_info.get("sockets")))

    async def _reattach_tcp(self, network: str) -> None:
        """Reach the running kernel at the address the engine reports now (the keys came with the connection)."""
        assert self.container_id is not None
        configured = self.engine.kernel_network
        if configured is not None and configured.name == network:
            self._network = configured
        else:  # started on another network (the operator changed it): only its address is needed
            self._network = KernelNetwork(name=network, bridge="", peers=[], firewall=False)
        attrs = await self.engine.inspect(self.container_id)
        if attrs is None or not attrs["State"]["Running"]:
            return  # poll() says it is gone
        self._pid = self._local_pid(int(attrs["State"]["Pid"]))
        try:
            address = self._network.address(attrs)
        except KernelNetworkError as unreachable:  # taken off the network meanwhile
            raise SocketRefused(str(unreachable)) from None
        self.connection_info = transport.reach(self.parent, address)

    def _local_pid(self, pid: int) -> int | None:
        """``pid`` if it is this container's init on this host (its cgroup names the container), else None.

        Over tcp the gateway may run on another host than the engine, where ``pid`` is some other
        process: then no usage is read from ``/proc``.
        """
        try:
            with open(f"/proc/{pid}/cgroup") as cgroups:
                return pid if self.container_id and self.container_id in cgroups.read() else None
        except OSError:
            return None
