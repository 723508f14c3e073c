"""Starts and re-attaches sandbox kernels through jupyter_client's provisioner machinery.

    launcher = KernelLauncher(runtime_dir="/tmp/code-gateway-1a2b3c4d", parent=app)
    await launcher.start()                     # resolves provisioner "auto" to docker or local
    km = await launcher.launch(sandbox)        # an AsyncKernelManager whose kernel is up
    sandbox.kernel = await launcher.record(km) # what another gateway process needs to re-attach
    km = await launcher.reattach(sandbox)      # after a restart; None if the kernel is gone

The provisioner is named in the kernelspec's metadata (``kernel_provisioner``), so the choice of
where kernels run is made once, here, and jupyter_client's ``KernelProvisionerFactory`` loads it
from the ``jupyter_client.kernel_provisioners`` entry points. Kernels use the ipc transport in a
per-sandbox directory by default: no TCP port is opened, and a container needs no network to be
reached. A provisioner may put a kernel on tcp instead (``gateway.provisioners.transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import importlib.resources
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import zmq.asyncio
from jupyter_client.connect import KernelConnectionInfo
from prometheus_client import Counter
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode, default
from traitlets.config import LoggingConfigurable
from traitlets.utils.importstring import import_item

from gateway.errors import SandboxNotRunning
from gateway.execution.messages import MessageGate
from gateway.metrics import GatewayMetrics
from gateway.provisioners.base import SANDBOX_DIR_KWARG, SANDBOX_KWARG
from gateway.provisioners.mounts import unmount_under
from gateway.provisioners.sockets import MAX_MESSAGE_BYTES, KernelSockets, SocketRefused
from gateway.provisioners.transport import ConnectedSockets

@dataclasses.dataclass(frozen=True)
class LeftKernel:
    """A kernel found on the engine: which sandbox it is, which replica started it, how to remove it."""

    sandbox_id: str
    instance: str
    ref: str


#: Our names for provisioners -> their entry point names.
PROVISIONERS = {"local": "code-gateway-local", "docker": "code-gateway-docker",
                "kubernetes": "code-gateway-kubernetes"}
#: What the kernels of a provisioner share, started once per gateway (``configured(launcher, runtime_dir)``).
ENGINES = {"docker": "gateway.provisioners.docker.DockerEngine",
           "kubernetes": "gateway.provisioners.kubernetes.KubernetesEngine"}
#: The same for a context's kernel: a second kernel inside a running sandbox (docker: an exec in its
#: container). Kubernetes has none yet (it would need pods/exec): contexts are refused there.
CONTEXT_PROVISIONERS = {"local": "code-gateway-local", "docker": "code-gateway-docker-context"}
#: How a context's kernelspec is named: ``python3:context`` (its provisioner is the context one).
CONTEXT_SUFFIX = ":context"


def default_kernels_dir() -> str:
    """``kernels/`` as the installed package holds it: ``gateway/kernels`` (package data).

    In a checkout (and an editable install) ``gateway/kernels`` is a link to the top-level
    ``kernels/``, the source the sandbox image is also built from; a wheel carries a copy.
    """
    return str(importlib.resources.files("gateway") / "kernels")


def default_runtime_dir(data_dir: str) -> str:
    """A short directory for kernel sockets: ipc socket paths must stay under ~107 bytes."""
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), f"code-gateway-{digest}")


# The longest kernel socket path under a runtime dir: ``/<sandbox uuid>/run/k-<port>``.
LONGEST_SOCKET_SUFFIX = len("/00000000-0000-0000-0000-000000000000/run/k-65535")
# sockaddr_un's sun_path is 108 bytes with its terminating NUL.
UNIX_SOCKET_PATH_MAX = 107


def check_runtime_dir(path: str) -> str:
    """``path`` if a local kernel's ipc sockets fit under it, else a ``ValueError`` saying why.

    Past the limit a kernel cannot bind at all and would only report that it died while starting.
    """
    longest = len(os.fsencode(os.path.abspath(path))) + LONGEST_SOCKET_SUFFIX
    if longest > UNIX_SOCKET_PATH_MAX:
        room = UNIX_SOCKET_PATH_MAX - LONGEST_SOCKET_SUFFIX
        raise ValueError(f"{path!r} is too long for the kernels' unix sockets: at most {room} bytes "
                         f"(its absolute path has {longest - LONGEST_SOCKET_SUFFIX})")
    return path


def json_safe(value: Any) -> Any:
    """Connection info holds its key as bytes; the store keeps JSON."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def relocated(kernel: dict[str, Any], sandbox_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A recorded kernel's connection and provisioner info, moved into ``sandbox_dir`` if its provisioner
    allows it (``relocatable``: docker, whose sockets this host reaches through a link of its own).

    Another replica re-attaching a kernel (it took the sandbox over) keeps it under its own runtime
    directory, which the replica that started it may clean up when it comes back.
    """
    connection, info = dict(kernel["connection"]), dict(kernel["provisioner"])
    old = info.get("sandbox_dir")
    if info.get("relocatable") and old and old != sandbox_dir:
        info["sandbox_dir"] = sandbox_dir
        if isinstance(connection.get("ip"), str) and connection["ip"].startswith(old + "/"):
            connection["ip"] = sandbox_dir + connection["ip"][len(old):]
    return connection, info


class SandboxKernelManager(AsyncIOLoopKernelManager):
    """A kernel manager as jupyter_server's kernel WebSocket expects one.

    The IOLoop flavour, because that code wants its ``connect_*`` sockets as ``ZMQStream``s,
    plus the activity fields it reads. No automatic restarts: a kernel's death is reported
    (``SandboxRuntime`` watches it) and the owner decides. ``messages`` is the sandbox's
    ``MessageGate``: every reader of this kernel's sockets admits messages through it.
    ``sockets`` holds the kernel's sockets by descriptor; ``ip`` names the links to them
    (``<sandbox_dir>/sock/k``), so every connect made through this manager or its clients (our
    readers, jupyter_server's channels, ZeroMQ's reconnects) reaches only what was verified.
    """

    autorestart = Bool(False)

    def __init__(self, *, sandbox_id: str, dropped: Counter | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.messages = MessageGate(sandbox_id, self.session, dropped=dropped)
        #: The kernel's sockets, held by descriptor (its provisioner attaches them at each launch).
        self.sockets = KernelSockets(max_message_bytes)
        #: The sockets ``connect_*`` handed out (jupyter_server's channels): they follow a relaunched kernel.
        self.connected = ConnectedSockets()
        # Plain attributes, not traits: they change with every execution, on the hot path.
        #: idle, busy, starting, restarting or dead, from the kernel's status messages.
        self.execution_state = "starting"
        #: When the kernel last reported its status.
        self.last_activity = datetime.now(timezone.utc)
        #: Why the kernel last failed, if it did (jupyter_server's WebSocket code sets it).
        self.reason = ""
        #: For a context's kernel: the sandbox it runs in (None for a sandbox's own kernel).
        self.context_of: str | None = None

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> zmq.Socket[Any]:
        socket: zmq.Socket[Any] = super()._create_connected_socket(channel, identity=identity)
        self.connected.add(socket, self, channel)
        return socket


class SandboxKernelSpecManager(KernelSpecManager):
    """Serves the kernelspecs of ``kernels/`` (one per language), each with the chosen provisioner in
    its metadata; ``NAME:context`` is NAME started as a context (with the context provisioner)."""

    def __init__(self, specs: dict[str, KernelSpec], context_specs: dict[str, KernelSpec], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = specs
        self._context_specs = context_specs

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name.endswith(CONTEXT_SUFFIX):
            found = self._context_specs.get(kernel_name.removesuffix(CONTEXT_SUFFIX))
        else:
            found = self.specs.get(kernel_name)
        if found is None:
            raise NoSuchKernel(kernel_name)
        return found


class KernelLauncher(LoggingConfigurable):
    """Creates one AsyncKernelManager per sandbox, kernels running where ``provisioner`` says."""

    provisioner = CaselessStrEnum(
        ["auto", "docker", "kubernetes", "local"],
        default_value="auto",
        help="Where sandbox kernels run: docker (one container each), kubernetes (one pod each), local (plain "
        "processes, development only), or auto (docker if the engine answers, else local with a warning).",
    ).tag(config=True)
    kernels_dir = Unicode(help="Directory holding the sandbox kernelspec and IPython profile.").tag(config=True)
    kernel_name = Unicode("python3", help="Kernelspec (under kernels_dir) that sandboxes run.").tag(config=True)
    startup_timeout = Float(60.0, help="Seconds a new kernel may take to answer.").tag(config=True)
    receive_hwm = Int(
        16, help="Messages each of the gateway's kernel sockets (its own and jupyter_server's) receives ahead of reading them (ZMQ's "
        "receive high-water mark; 0: no bound). Past it the kernel's send queue holds the rest, in the "
        "sandbox's memory: the gateway makes that queue unbounded (KernelConnection.open), so nothing is lost.",
    ).tag(config=True)

    @default("kernels_dir")
    def _kernels_dir_default(self) -> str:
        return default_kernels_dir()

    def __init__(self, runtime_dir: str, *, metrics: GatewayMetrics | None = None, instance_id: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime_dir = Path(runtime_dir)
        #: Bytes of one message a kernel may send the gateway (its relays cut a larger one): the
        #: sandbox manager sets it from its output caps.
        self.max_message_bytes = MAX_MESSAGE_BYTES
        #: This replica's id: it labels the kernels it starts (docker: ``code-gateway.instance``).
        self.instance_id = instance_id
        self.metrics = metrics or GatewayMetrics()
        self.context = zmq.asyncio.Context.instance()
        # A bounded receive queue, so a kernel publishing faster than the gateway reads (a flood
        # at full speed, a loop starved of CPU) holds no more than this many messages in the
        # gateway: past it ZMQ stops reading the kernel's socket, and the backlog waits in the
        # kernel's send queue, in the sandbox's memory, which KernelConnection.open unbounds
        # (with ipykernel's default of 1000 the kernel's PUB socket would drop the rest silently).
        self.context.setsockopt(zmq.RCVHWM, self.receive_hwm)
        #: Problems an operator should see in /health (e.g. falling back to local).
        self.warnings: list[str] = []
        self.resolved = "local"
        self.spec_manager: SandboxKernelSpecManager | None = None
        #: What the resolved provisioner's kernels share (``DockerEngine``, ``KubernetesEngine``); None for local.
        self.engine: Any = None

    async def start(self) -> None:
        """Decide where kernels run and prepare the kernelspec."""
        self.resolved = await self._resolve()
        self.runtime_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        if self.resolved in ENGINES:
            self.engine = import_item(ENGINES[self.resolved]).configured(self, self.runtime_dir)
            self.warnings.extend(await self.engine.start())
        # Only the specs in kernels_dir: not ipykernel's own python3, whose argv names the gateway's
        # interpreter (fine for a local process, absent in a container).
        found = KernelSpecManager(kernel_dirs=[self.kernels_dir], ensure_native_kernel=False)
        names = sorted(found.find_kernel_specs())
        if self.kernel_name not in names:
            raise NoSuchKernel(self.kernel_name)

        def with_provisioner(name: str, provisioner: str) -> KernelSpec:
            spec = copy.deepcopy(found.get_kernel_spec(name))
            spec.metadata = {**spec.metadata, "kernel_provisioner": {"provisioner_name": provisioner, "config": {}}}
            return spec

        self.spec_manager = SandboxKernelSpecManager(
            {name: with_provisioner(name, PROVISIONERS[self.resolved]) for name in names},
            {name: with_provisioner(name, CONTEXT_PROVISIONERS[self.resolved]) for name in names}
            if self.resolved in CONTEXT_PROVISIONERS else {},
            parent=self,
        )

    async def _resolve(self) -> str:
        if self.provisioner != "auto":
            return str(self.provisioner)
        from gateway.provisioners.engine import engine_answers

        if await engine_answers():
            return "docker"
        message = (
            "no Docker engine answers: sandboxes run as LOCAL PROCESSES WITHOUT ISOLATION "
            "(provisioner 'auto' fell back to 'local'); start Docker for real sandboxes"
        )
        self.log.warning(message)
        self.warnings.append(message)
        return "local"

    @property
    def isolates(self) -> bool:
        """Whether sandboxes here are containers (with an isolation: runc or gvisor), not local processes."""
        return self.resolved == "docker"

    def unavailable(self) -> dict[str, str] | None:
        """Isolation -> why sandboxes cannot run under it here; None when sandboxes are local processes."""
        return dict(self.engine.unavailable) if self.isolates and self.engine is not None else None

    def live_pids(self, isolation: str | None) -> bool:
        """Whether a running sandbox of ``isolation`` can get a new process limit (the warm pool lowers it)."""
        if isolation is None or not self.isolates or self.engine is None:
            return True
        return bool(self.engine.isolation(isolation).live_pids)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.runtime_dir / sandbox_id

    def _kernel_manager(self, sandbox_id: str, context_id: str | None = None,
                        kernel_name: str | None = None) -> SandboxKernelManager:
        directory = self.sandbox_dir(sandbox_id)
        # A context's files sit beside the sandbox's own, under a short name (ipc paths are short).
        name = "k" if context_id is None else f"c{context_id[:8]}"
        km = SandboxKernelManager(
            sandbox_id=sandbox_id,
            dropped=self.metrics.kernel_messages_dropped,
            max_message_bytes=self.max_message_bytes,
            parent=self,
            kernel_name=(kernel_name or self.kernel_name) + ("" if context_id is None else CONTEXT_SUFFIX),
            kernel_spec_manager=self.spec_manager,
            context=self.context,
            transport="ipc",
            ip=str(directory / "sock" / name),
            connection_file=str(directory / ("connection.json" if context_id is None else f"{name}.json")),
            shutdown_wait_time=2.0,
        )
        km.context_of = None if context_id is None else sandbox_id
        return km

    def kernel_names(self) -> list[str]:
        """The kernelspecs sandboxes can run (those in ``kernels_dir``)."""
        assert self.spec_manager is not None
        return sorted(self.spec_manager.specs)

    async def launch_context(self, sandbox: Any, context_id: str, kernel_name: str) -> SandboxKernelManager:
        """Start another kernel (``kernel_name``) inside the running ``sandbox``: one of its contexts.

        It shares the sandbox's container (or, local, its working directory), limits and user;
        its ipc sockets and connection file are its own. ``dispose`` leaves the sandbox's directory.
        """
        if kernel_name not in self.kernel_names():
            raise NoSuchKernel(kernel_name)
        if self.resolved not in CONTEXT_PROVISIONERS:
            raise SandboxNotRunning(f"sandbox {sandbox.id} runs on {self.resolved!r}, where contexts cannot run")
        km = self._kernel_manager(sandbox.runtime_id, context_id, kernel_name)
        try:
            async with asyncio.timeout(self.startup_timeout):  # (wait_for can swallow a cancellation)
                await km.start_kernel(kernel_id=context_id, **self._launch_kwargs(sandbox))
        except BaseException:
            await self.dispose(km)
            raise
        return km

    async def launch(self, sandbox: Any) -> SandboxKernelManager:
        """Start the kernel of ``sandbox`` (its ``runtime_id`` becomes the kernel id)."""
        directory = self.sandbox_dir(sandbox.runtime_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        km = self._kernel_manager(sandbox.runtime_id)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (a stop's).
            async with asyncio.timeout(self.startup_timeout):
                await km.start_kernel(kernel_id=sandbox.runtime_id, **self._launch_kwargs(sandbox))
        except BaseException:
            await self.dispose(km)
            raise
        return km

    def _launch_kwargs(self, sandbox: Any) -> dict[str, Any]:
        # Provisioners give the kernel ``sandbox.env``: here that is the user's env plus the gateway's settings.
        # They name containers and directories by ``id``: the runtime's (see ``Sandbox.runtime_id``).
        for_kernel = dataclasses.replace(sandbox, id=sandbox.runtime_id, env=sandbox.kernel_env())
        return {SANDBOX_KWARG: for_kernel, SANDBOX_DIR_KWARG: str(self.sandbox_dir(sandbox.runtime_id))}

    async def relaunch(self, km: AsyncKernelManager, sandbox: Any) -> None:
        """A fresh kernel for ``sandbox`` behind the same kernel manager, connection file and sockets.

        Like ``km.restart_kernel(now=True)``, which a re-attached manager cannot do (it never
        called ``start_kernel``). Clients connected to the old kernel's sockets (the Jupyter
        WebSocket) reconnect to the new one by themselves.
        """
        await km.shutdown_kernel(now=True, restart=True)
        async with asyncio.timeout(self.startup_timeout):
            await km.start_kernel(**self._launch_kwargs(sandbox))
        if isinstance(km, SandboxKernelManager):
            km.connected.repoint(km)  # over tcp the new kernel has a new address and keys

    async def record(self, km: AsyncKernelManager) -> dict[str, Any]:
        """JSON-safe connection and provisioner info: enough to re-attach from another process."""
        assert km.provisioner is not None
        recorded: dict[str, Any] = json_safe(
            {"connection": km.get_connection_info(session=False),
             "provisioner": await km.provisioner.get_provisioner_info(), "runtime_id": km.kernel_id}
        )
        return recorded

    async def reattach(self, sandbox: Any) -> SandboxKernelManager | None:
        """A kernel manager for the still-running kernel of ``sandbox``, or None if it is gone."""
        if not sandbox.kernel.get("connection") or not sandbox.kernel.get("provisioner"):
            return None
        km = self._kernel_manager(sandbox.runtime_id)
        km.kernel_id = sandbox.runtime_id
        # The kernel was started (by an earlier gateway process). Without this, jupyter_client's
        # pending-state bookkeeping reuses one "ready" future for the shutdown and the start of a
        # later relaunch, and the start fails with InvalidStateError.
        km._attempted_start = True
        connection, info = relocated(sandbox.kernel, str(self.sandbox_dir(sandbox.runtime_id)))
        km.load_connection_info(cast(KernelConnectionInfo, connection))
        km.provisioner = KernelProvisionerFactory.instance(parent=self).create_provisioner_instance(
            sandbox.runtime_id, km.kernel_spec, parent=km
        )
        try:
            await km.provisioner.load_provisioner_info(info)
        except SocketRefused as refused:
            self.log.warning("sandbox %s: not re-attaching to its kernel: %s", sandbox.id, refused)
            await self.dispose(km)
            return None
        if not km.provisioner.has_process or await km.provisioner.poll() is not None:
            await self.dispose(km)
            return None
        return km

    async def left_kernels(self) -> list[LeftKernel]:
        """Every sandbox kernel the engine has, running or stopped, of any gateway (docker: labelled containers)."""
        if self.engine is None:
            return []
        return [LeftKernel(sandbox_id, instance, container_id)
                for container_id, sandbox_id, instance in await self.engine.containers()]

    async def remove_left(self, kernel: LeftKernel) -> None:
        """Remove a kernel that ``left_kernels`` found (its sandbox is over, or never was)."""
        if self.engine is not None:
            await self.engine.remove(kernel.ref)

    def sandbox_dirs(self) -> list[str]:
        """The sandbox ids that have a directory in this gateway's runtime directory."""
        if not self.runtime_dir.is_dir():
            return []
        return [d.name for d in self.runtime_dir.iterdir() if d.is_dir() and not d.is_symlink()]

    def remove_sandbox_dir(self, sandbox_id: str) -> None:
        self._remove_dir(self.sandbox_dir(sandbox_id))

    async def stop(self) -> None:
        """Release what kernels shared (the docker client and event stream); kernels are left as they are.

        The runtime directory goes too once no sandbox has a directory in it: each data directory
        has its own, and a host that runs many short-lived gateways (tests, CI) would keep one each.
        """
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        with contextlib.suppress(OSError):  # not empty: a sandbox kept for the next start is in it
            self.runtime_dir.rmdir()

    async def dispose(self, km: AsyncKernelManager, *, remove_dir: bool = True) -> None:
        """Stop the kernel if it still runs and free everything the sandbox had on this host."""
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            elif km.provisioner is not None:
                await km.provisioner.cleanup(restart=False)
        finally:
            if remove_dir and km.kernel_id and getattr(km, "context_of", None) is None:
                self._remove_dir(self.sandbox_dir(km.kernel_id))

    def _remove_dir(self, directory: Path) -> None:
        """Remove a sandbox's directory, first unmounting what is mounted in it (a gVisor sandbox's sockets)."""
        try:
            unmount_under(directory)
        except OSError as exc:
            self.log.warning("could not unmount under %s: %s", directory, exc)
        shutil.rmtree(directory, ignore_errors=True)
