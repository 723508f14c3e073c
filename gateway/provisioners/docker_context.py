"""The ``docker-context`` provisioner: another kernel inside a sandbox's running container (a context).

    launcher.launch_context(sandbox, context_id, "bash")   # names this provisioner in its kernelspec

The kernel is a ``docker exec`` in the sandbox's container, so it has everything the sandbox's
own kernel has: the same user, no capabilities, no network, read-only root, the container's
cgroup (CPU, memory, pids are shared, not added), its files. Its ipc sockets are its own,
``/run/code-gateway/c<id>-<n>`` in the container, reached from the host through the sandbox's
``<sandbox_dir>/sock`` link (which ``DockerProvisioner`` keeps pointed at the container); its
connection file arrives in an environment variable and is written by a bootstrap that then
becomes the kernel, which never sees the sandbox kernel's key (that variable is unset).

The gateway watches the kernel's process (as the host sees it: the exec's pid) with a pidfd:
its exit is noticed at once, and signals never reach a reused pid.

Under gVisor the exec's host process is runsc's ``runsc-exec``, which exits with the kernel but
passes no SIGKILL on (``gateway.provisioners.runsc``): it is still what is watched, but signals go
to the kernel itself inside the sandbox, by its in-sandbox pid through ``runsc kill --pid``. That
pid is the bootstrap's ``$$`` (it then becomes the kernel), written next to the connection file
and checked against ``runsc ps`` (an exec'd process of the sandbox's uid). The sandbox could
rewrite that file, but runsc signals only that sandbox's processes, all of them its own to kill
anyway. The sockets are the gVisor sandbox kernel's way: in the gateway's socket tmpfs, attached
by descriptor, owned by the sandbox's uid (the tmpfs's owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import stat
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from gateway.errors import SandboxNotRunning
from gateway.provisioners.base import (
    KERNELS_IN_IMAGE, SANDBOX_DIR_KWARG, SANDBOX_KWARG, KernelExitedAtStart, argv_in_image,
)
from gateway.provisioners.docker import CONNECTION_ENV, DockerEngine, engine_of
from gateway.provisioners.execs import ExecNotStarted, exec_pid
from gateway.provisioners.isolation import CONTAINER_DIR, GVISOR, HOME, RUNC, Isolation
from gateway.provisioners.runsc import RunscError, RunscSandbox
from gateway.provisioners.sockets import SocketRefused, sockets_of
from gateway.provisioners.usage import cgroup_paths, oom_kills, process_tree

log = logging.getLogger(__name__)

#: In the image: runs a TCP-only kernel behind ipc sockets (kernels/tools/kernel_relay.py).
RELAY = f"{KERNELS_IN_IMAGE}/tools/kernel_relay.py"
#: The context's connection file, in an environment variable until the bootstrap writes it.
CONTEXT_CONNECTION_ENV = "CODE_GATEWAY_CONTEXT_CONNECTION"


#: The most a pid file may hold (digits and a newline).
PID_FILE_BYTES = 32


def bootstrap(connection_file: str, pid_file: str) -> str:
    """Note its pid, write the connection file, drop both connection variables, then become the kernel."""
    return (f'echo $$ > {pid_file} && printf %s "${CONTEXT_CONNECTION_ENV}" > {connection_file} && '
            f'unset {CONTEXT_CONNECTION_ENV} {CONNECTION_ENV} && exec "$@"')


class DockerContextProvisioner(KernelProvisionerBase):
    """Runs a context's kernel as an exec in its sandbox's container."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exec_id: str | None = None
        self.host_pid: int | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[None] | None = None
        self._exit_code: int | None = None
        self._sandbox_id = ""
        #: The sandbox's directory and isolation: where its kernels' sockets are found.
        self._sandbox_dir = Path()
        self._isolation_name = RUNC
        #: The container's cgroup, and how many OOM kills it had when the kernel started.
        self._cgroup: dict[str, Path] = {}
        self._oom_before: int | None = None
        #: gVisor: the container, the kernel's pid inside the sandbox, and runsc's handle on it.
        self._container_id: str | None = None
        self.sandbox_pid: int | None = None
        self._runsc: RunscSandbox | None = None

    @property
    def engine(self) -> DockerEngine:
        return engine_of(self)

    @property
    def has_process(self) -> bool:
        return self._pidfd is not None

    def _name(self) -> str:
        km = self.parent
        assert km is not None
        return Path(km.connection_file).stem  # c<id>: the context's short name

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        sandbox = kwargs.pop(SANDBOX_KWARG)
        sandbox_dir = Path(kwargs.pop(SANDBOX_DIR_KWARG))
        self._sandbox_id = sandbox.id
        self._sandbox_dir, self._isolation_name = sandbox_dir, getattr(sandbox, "isolation", None) or RUNC
        km = self.parent
        assert km is not None, "a provisioner is created by its kernel manager"
        sockets_of(km).detach()
        name = self._name()
        km.ip = str(sandbox_dir / "sock" / name)
        km.write_connection_file()
        self.connection_info = km.get_connection_info()
        inside = {**self.connection_info, "ip": f"{CONTAINER_DIR}/{name}"}
        inside["key"] = inside["key"].decode() if isinstance(inside["key"], bytes) else inside["key"]
        inside.pop("kernel_name", None)
        connection_file = f"{CONTAINER_DIR}/{name}.json"
        if self.kernel_spec.metadata.get("code_gateway", {}).get("transport") == "tcp":
            # A kernel that speaks only TCP (Deno's) runs behind a relay to its ipc sockets.
            tcp_file = f"{CONTAINER_DIR}/{name}-tcp.json"
            argv = ["python3", "-I", RELAY, connection_file, tcp_file, "--",
                    *argv_in_image(self.kernel_spec.argv, self.kernel_spec, tcp_file)]
        else:
            argv = argv_in_image(self.kernel_spec.argv, self.kernel_spec, connection_file)
        pid_file = f"{CONTAINER_DIR}/{name}.pid"
        return {"cmd": ["sh", "-c", bootstrap(connection_file, pid_file), "sh", *argv], "sandbox": sandbox,
                "environment": {**self.kernel_spec.env, **sandbox.env, CONTEXT_CONNECTION_ENV: json.dumps(inside)}}

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        engine = self.engine
        container = await engine.running_container(self._sandbox_id)
        if container is None:
            raise SandboxNotRunning(f"sandbox {self._sandbox_id} has no running container")
        self._container_id, self.sandbox_pid, self._runsc = container, None, None
        await self._remove_stale_sockets(container)
        api = engine.client.api
        self.exec_id = str((await engine.call(api.exec_create, container, cmd, environment=kwargs["environment"],
                                              workdir=HOME))["Id"])
        await engine.call(api.exec_start, self.exec_id, detach=True)
        self._exit_code = None
        try:  # (however long the engine takes: the launcher bounds the whole start, startup_timeout)
            pid = await exec_pid(engine, self.exec_id)
        except ExecNotStarted as exc:
            raise KernelExitedAtStart(f"the context's kernel did not start ({exc})") from None
        try:
            self._watch(pid, await self._cgroup_pid(container, pid))
        except ProcessLookupError:
            raise KernelExitedAtStart("the context's kernel exited at once") from None
        try:
            await self._attach_sockets(container)
            if self._gvisor:
                self.sandbox_pid = await self._read_sandbox_pid(container)
        except BaseException:
            await self._kill_all()
            raise
        log.info("sandbox %s: context kernel %s started (pid %s%s)", self._sandbox_id, self._name(), self.host_pid,
                 f", {self.sandbox_pid} in the sandbox" if self.sandbox_pid else "")
        return self.connection_info

    @property
    def _gvisor(self) -> bool:
        return self._isolation_name == GVISOR

    async def _cgroup_pid(self, container: str, host_pid: int) -> int:
        """Whose cgroup is the container's: the exec's own under runc; under gVisor the Sentry's
        (``runsc-exec`` is not in it)."""
        if not self._gvisor:
            return host_pid
        state = await self.engine.state(container)
        return int(state["Pid"]) if state and state["Running"] else host_pid

    async def _read_sandbox_pid(self, container: str) -> int:
        """gVisor: the kernel's pid inside the sandbox, from the pid file its bootstrap wrote (opened by
        descriptor in the verified socket directory, never followed), confirmed by ``runsc ps``."""
        process = await self._container_init(container)
        try:
            runsc = RunscSandbox.of(container, process, runsc=self.engine.runsc)
            directory = self._socket_directory(process)
        except RunscError as exc:
            raise SocketRefused(str(exc)) from None
        finally:
            os.close(process)
        try:
            owner = os.fstat(directory).st_uid
            name = f"{self._name()}.pid"
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
            except OSError as exc:
                raise SocketRefused(f"{name} cannot be opened ({exc.strerror})") from None
            with open(fd, "rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
                    raise SocketRefused(f"{name} is not a file of the sandbox's uid")
                text = file.read(PID_FILE_BYTES)
        finally:
            os.close(directory)
        try:
            pid = int(text.strip())
        except ValueError:
            raise SocketRefused(f"{name} holds no pid") from None
        found = (await runsc.processes()).get(pid)
        if found is None or pid == 1 or found.ppid != 0 or found.uid != owner:
            raise SocketRefused(f"{name} names no process exec'd in the sandbox as its uid ({found})")
        self._runsc = runsc
        return pid

    def _socket_directory(self, process: int) -> int:
        """The sandbox's kernel socket directory, reached as its own kernel's is (its isolation's way)."""
        isolation: Isolation = self.engine.isolation(self._isolation_name)
        return isolation.socket_directory(process, self._sandbox_dir)

    async def _container_init(self, container: str) -> int:
        """An ``O_PATH`` descriptor of the container's init in /proc (checked to be it: no reused pid)."""
        process = await self.engine.open_init(container)
        if process is None:
            raise SocketRefused("the sandbox's container stopped")
        return process

    async def _remove_stale_sockets(self, container: str) -> None:
        """An earlier kernel of this context (before a restart) left its socket files: the new one's
        must be the ones attached. Unlinked by name in the verified directory (never followed)."""
        km = self.parent
        assert km is not None
        process = await self._container_init(container)
        try:
            directory = self._socket_directory(process)
            try:
                for name in [*(f"{self._name()}-{port}" for port in km.ports), f"{self._name()}.pid"]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=directory)
            finally:
                os.close(directory)
        finally:
            os.close(process)

    async def _attach_sockets(self, container: str) -> None:
        """Hold the kernel's sockets by descriptor (``gateway.provisioners.sockets``), reached from the
        container's root as the sandbox kernel's are, once the kernel has bound them all."""
        km = self.parent
        assert km is not None and self.host_pid is not None
        process = await self._container_init(container)
        try:
            if self._gvisor:  # (the exec's host process is runsc's, root: the socket tmpfs is the sandbox uid's)
                fd = self._socket_directory(process)
                try:
                    owner = os.fstat(fd).st_uid
                finally:
                    os.close(fd)
            else:
                owner = os.stat(f"/proc/{self.host_pid}").st_uid  # (the kernel's user: the sandbox's)

            def directory() -> int:
                if not self._alive():
                    raise KernelExitedAtStart("the context's kernel exited before it bound its sockets")
                return self._socket_directory(process)

            await sockets_of(km).attach_when_bound(directory, Path(km.ip), list(km.ports), owner=owner)
        finally:
            os.close(process)

    def _watch(self, host_pid: int, cgroup_pid: int) -> None:
        """Hold a pidfd of the kernel: readable once it exits (signals through it cannot hit a reused pid)."""
        self.host_pid = host_pid
        self._pidfd = os.pidfd_open(host_pid)
        self._cgroup = cgroup_paths(cgroup_pid)
        self._oom_before = oom_kills(self._cgroup)
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        loop.add_reader(self._pidfd, self._saw_exit)

    def _saw_exit(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)

    def _alive(self) -> bool:
        if self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable

    async def _code(self) -> int:
        if self._exit_code is None:
            try:
                inspected = await self.engine.call(self.engine.client.api.exec_inspect, self.exec_id)
                self._exit_code = int(inspected.get("ExitCode") if inspected.get("ExitCode") is not None else -1)
            except Exception:
                self._exit_code = -1
        return self._exit_code

    async def poll(self) -> int | None:
        if self._pidfd is None:
            return 0
        return None if self._alive() else await self._code()

    async def wait(self) -> int | None:
        if self._exited is None:
            return None
        await asyncio.shield(self._exited)
        return await self._code()

    async def send_signal(self, signum: int) -> None:
        if self._pidfd is None or not self._alive():
            return
        if self._gvisor:
            if self._runsc is not None and self.sandbox_pid is not None:
                await self._runsc.signal(self.sandbox_pid, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    async def kill(self, restart: bool = False) -> None:
        await self._kill_all()

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def _kill_all(self) -> None:
        """SIGKILL the kernel and what it started, the isolation's way."""
        if not self._gvisor:
            self._kill_tree()
            return
        if self._pidfd is None or not self._alive():
            return
        if self.sandbox_pid is None and self._container_id is not None:
            # It did not start in time, or bound nothing: its bootstrap noted its pid first thing.
            with contextlib.suppress(Exception):
                self.sandbox_pid = await self._read_sandbox_pid(self._container_id)
        if self._runsc is not None and self.sandbox_pid is not None:
            try:
                await self._runsc.kill_tree(self.sandbox_pid)
                return
            except RunscError:
                log.warning("sandbox %s: runsc could not kill context kernel %s", self._sandbox_id, self._name(),
                            exc_info=True)
        # Its pid in the sandbox cannot be known: at least end the exec (whatever still runs inside
        # goes with the container; none of its sockets is attached).
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _kill_tree(self) -> None:
        """SIGKILL the kernel and every process below it (what its code started, a relayed kernel):
        found before the kernel dies, as orphans are adopted by the container's init."""
        if self._pidfd is None or self.host_pid is None or not self._alive():
            return
        below = process_tree(self.host_pid)[1:]
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def cleanup(self, restart: bool = False) -> None:
        sockets_of(self.parent).detach()
        await self._kill_all()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)

    async def exit_reason(self) -> str:
        """``sandbox_died`` if its container is gone with it; ``out_of_memory`` if the container's OOM
        killer struck since the kernel started (its kernels share the sandbox's memory); else ``kernel_died``."""
        try:
            container = await self.engine.running_container(self._sandbox_id)
        except Exception:
            return "kernel_died"
        if container is None:
            return "sandbox_died"
        now = oom_kills(self._cgroup)
        if now is not None and self._oom_before is not None and now > self._oom_before:
            return "out_of_memory"
        return "kernel_died"

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(exec_id=self.exec_id, host_pid=self.host_pid, sandbox_id=self._sandbox_id,
                    isolation=self._isolation_name, container_id=self._container_id, sandbox_pid=self.sandbox_pid)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.exec_id = provisioner_info.get("exec_id")
        self._sandbox_id = provisioner_info.get("sandbox_id") or ""
        self._isolation_name = provisioner_info.get("isolation") or RUNC
        self._container_id = provisioner_info.get("container_id")
        pid = provisioner_info.get("host_pid")
        if self.exec_id and pid:
            with contextlib.suppress(Exception):
                inspected = await self.engine.call(self.engine.client.api.exec_inspect, self.exec_id)
                if inspected.get("Running") and int(inspected.get("Pid") or 0) == int(pid):
                    container = self._container_id or ""
                    self._watch(int(pid), await self._cgroup_pid(container, int(pid)) if container else int(pid))
                    if self._gvisor and container:
                        self.sandbox_pid = await self._read_sandbox_pid(container)
