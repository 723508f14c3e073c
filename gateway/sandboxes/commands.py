"""Runs a tool from ``kernels/tools/`` inside a sandbox, next to its kernel but not through it.

    commands = SandboxCommands(launcher)
    process = await commands.start(sandbox, "sandbox_files.py", timeout=30)
    await process.write(b'{"op": "list", "path": ""}\\n')
    await process.close_stdin()
    line = await process.readline()
    await process.close()

A tool runs as the sandbox's user in the sandbox's working directory, so everything it touches
is resolved in the sandbox's own view. That user is the one code in the sandbox runs as: it can
stop, trace or kill the tool, so nothing a tool says is trusted (callers check what they read),
and a tool can never stall the gateway:

- the gateway's side of a tool is non-blocking on the event loop (a subprocess pipe, or the
  exec's hijacked socket read and written with the loop's ``sock_*`` calls; the Docker calls
  that start it go to the engine's own executor);
- every read and write waits at most ``timeout`` seconds for the tool (``ToolStalled``), and
  closing a tool that has not finished kills it and what it started (``gateway.provisioners.execs``:
  under gVisor inside the sandbox, by the pid the exec announced first) and closes its connection;
- at most ``max_per_sandbox`` tools run in one sandbox at once; more wait that long for a turn
  (``TooManyOperations``), so one sandbox stalling its own tools holds only its own slots.

A tool starts with a fixed, minimal environment — never the user's ``env`` (a container's
environment includes it: ``LD_PRELOAD``, ``PATH``...): ``env -i`` with a fixed ``PATH``, every
variable of the container unset for ``env`` itself, the system's ``/usr/bin/python3 -I -S``,
and the tool's source (the gateway's own copy of ``kernels/tools/<tool>``) given with ``-c``.

- ``local`` sandboxes: a subprocess of the gateway (its own Python) in the sandbox's directory.
- ``docker`` sandboxes: ``docker exec`` in the sandbox's container (``code-gateway-<id>``, with
  our instance's labels). The archive API (``docker cp``) cannot be used: the root is read-only
  and the working directory a tmpfs it does not see.

Tools do not queue behind the user's executions and leave no trace in the history.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import EngineUnavailable, SandboxNotRunning, TooManyOperations
from gateway.provisioners.base import local_env, workdir_of
from gateway.provisioners.execs import PID_LINE_BYTES, announced_pid, announcing, signal_exec
from gateway.provisioners.isolation import GVISOR
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.model import Sandbox

log = logging.getLogger(__name__)

#: The working directory of a container sandbox.
CONTAINER_WORKDIR = "/home/sandbox"
#: All a tool gets of an environment, in a container.
CONTAINER_TOOL_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": CONTAINER_WORKDIR}
#: Most stderr kept from a tool, for the log.
MAX_STDERR = 8192
#: Seconds a tool may stay silent (no byte in either direction) unless its caller says otherwise.
IO_TIMEOUT = 60.0
#: Tools that may run in one sandbox at once.
MAX_PER_SANDBOX = 8
#: Seconds a tool under gVisor killed before its output was read has to show its pid (written at its start).
ANNOUNCEMENT_WAIT = 2.0
#: Seconds a write to a tool in a container may make no progress before the engine is asked whether
#: the tool still runs (a dead one's input is still taken, up to a pipe's worth, then never read).
STALLED_WRITE_CHECK = 1.0


@dataclasses.dataclass(frozen=True)
class DockerExec:
    """A started ``docker exec``: its hijacked connection (kept alive by it), its id, its container's."""

    raw: Any
    exec_id: str
    container_id: str
    #: Under gVisor: its first line of stdout is its pid in the sandbox, the one to signal.
    announcing: bool = False


class ToolStalled(TimeoutError):
    """The tool gave no sign of life in time (it was killed)."""


class SandboxProcess(abc.ABC):
    """A tool running inside a sandbox: bytes in on stdin, bytes out on stdout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._buffer = bytearray()
        self._eof = False
        self._stderr = bytearray()
        self._closed = False
        #: Called once when the process is closed (gives its sandbox's slot back).
        self.on_close: list[Callable[[], None]] = []

    @abc.abstractmethod
    async def write(self, data: bytes) -> bool:
        """Send ``data`` to the tool's stdin; False once the tool stopped reading it."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """End the tool's stdin."""

    @abc.abstractmethod
    async def _receive(self) -> bytes:
        """The next piece of stdout (``b""`` at its end), collecting stderr on the way."""

    @abc.abstractmethod
    async def _stop(self) -> None:
        """Kill the tool if it still runs and free what it held."""

    async def alive(self) -> bool:
        """Whether the sandbox the tool ran in is still the one that runs (not stopped or restarted)."""
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stop()
        finally:
            for callback in self.on_close:
                callback()

    async def _fill(self) -> None:
        while not self._buffer and not self._eof:
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self._receive()
            except TimeoutError:
                raise ToolStalled(f"the tool wrote nothing for {self.timeout:g} s") from None
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout; ``b""`` at its end."""
        await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def readline(self, limit: int = 16 << 20) -> bytes:
        """One line of stdout, with its newline (without one if the output ended first or ``limit`` was reached)."""
        line = bytearray()
        while not line.endswith(b"\n") and len(line) < limit:
            await self._fill()
            if not self._buffer:
                break
            end = self._buffer.find(b"\n")
            take = min(len(self._buffer) if end < 0 else end + 1, limit - len(line))
            line += self._buffer[:take]
            del self._buffer[:take]
        return bytes(line)

    @property
    def finished(self) -> bool:
        """Whether the tool's output ended (it exited, or at least closed its output)."""
        return self._eof

    def _keep_stderr(self, data: bytes) -> None:
        if len(self._stderr) < MAX_STDERR:
            self._stderr += data[: MAX_STDERR - len(self._stderr)]

    def stderr(self) -> str:
        """What the tool wrote to stderr so far (capped)."""
        return self._stderr.decode(errors="replace")


@dataclasses.dataclass
class _Slots:
    semaphore: asyncio.Semaphore
    users: int = 0


class SandboxCommands:
    """Starts tools in sandboxes, the way each sandbox's provisioner requires, a few at a time per sandbox."""

    def __init__(self, launcher: KernelLauncher, *, max_per_sandbox: int = MAX_PER_SANDBOX,
                 timeout: float = IO_TIMEOUT) -> None:
        self.launcher = launcher
        self.max_per_sandbox = max_per_sandbox
        self.timeout = timeout
        self._slots: dict[str, _Slots] = {}

    def source(self, tool: str) -> str:
        """The tool's code, from the gateway's own ``kernels/tools`` (so it always matches the gateway)."""
        return _read_source(str(Path(self.launcher.kernels_dir) / "tools" / tool))

    async def start(self, sandbox: Sandbox, tool: str, *, timeout: float | None = None) -> SandboxProcess:
        """Start ``tool`` in ``sandbox``; each of its reads and writes may wait ``timeout`` seconds."""
        timeout = self.timeout if timeout is None else timeout
        release = await self._take_slot(sandbox.id, timeout)
        try:
            if sandbox.provisioner == "docker":
                process = await self._start_docker(sandbox, tool, timeout)
            elif sandbox.provisioner == "local":
                process = await self._start_local(sandbox, tool, timeout)
            else:
                raise SandboxNotRunning(f"sandbox {sandbox.id} runs on {sandbox.provisioner!r}, where tools cannot run")
        except BaseException:
            release()
            raise
        process.on_close.append(release)
        return process

    async def _take_slot(self, sandbox_id: str, timeout: float) -> Callable[[], None]:
        """Wait (at most ``timeout``) for one of the sandbox's slots; the function that gives it back."""
        slots = self._slots.setdefault(sandbox_id, _Slots(asyncio.Semaphore(self.max_per_sandbox)))
        slots.users += 1

        def leave() -> None:
            slots.users -= 1
            if slots.users == 0 and self._slots.get(sandbox_id) is slots:
                del self._slots[sandbox_id]

        try:
            async with asyncio.timeout(timeout):
                await slots.semaphore.acquire()
        except TimeoutError:
            leave()
            raise TooManyOperations(f"{self.max_per_sandbox} file or state operations are already running in "
                                    f"sandbox {sandbox_id} and none ended within {timeout:g} s; try again later") from None
        except BaseException:
            leave()
            raise

        def release() -> None:
            slots.semaphore.release()
            leave()

        return release

    async def _start_local(self, sandbox: Sandbox, tool: str, timeout: float) -> SandboxProcess:
        workdir = workdir_of(self.launcher.sandbox_dir(sandbox.runtime_id))
        if not workdir.is_dir():
            raise SandboxNotRunning(f"sandbox {sandbox.id} has no working directory (is it running?)")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", self.source(tool),
            cwd=str(workdir),
            env=local_env(workdir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return LocalProcess(process, timeout)

    async def _start_docker(self, sandbox: Sandbox, tool: str, timeout: float) -> SandboxProcess:
        command = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in CONTAINER_TOOL_ENV.items()),
                   "/usr/bin/python3", "-I", "-S", "-c", self.source(tool)]
        started = await self.docker_exec(sandbox, command, CONTAINER_WORKDIR)
        return DockerProcess(started.raw, timeout, container_id=started.container_id, exec_id=started.exec_id,
                             engine=self.launcher.engine, announcing=started.announcing)

    async def docker_exec(self, sandbox: Sandbox, argv: list[str], workdir: str) -> DockerExec:
        """Start ``argv`` in the sandbox's container (its hijacked connection: stdin in, multiplexed
        stdout/stderr frames out). No user: the exec runs as the container's own user, the one the
        kernel runs as. Under gVisor its first line of stdout is its pid in the sandbox (``announcing``).

        ``argv`` starts with none of the container's environment (which holds the sandbox's ``env``
        and its kernel's connection), only ``CONTAINER_TOOL_ENV``: give it its own with ``env -i``.
        """
        import docker.errors
        import requests.exceptions

        from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_SANDBOX, container_name

        engine = self.launcher.engine
        if engine is None or engine.client is None:
            raise SandboxNotRunning(f"sandbox {sandbox.id} is a container, but this gateway has no Docker engine")
        api = engine.client.api
        not_running = SandboxNotRunning(f"sandbox {sandbox.id} has no running container (is it restarting?)")
        container_id: str | None = None
        try:
            # (under its runtime id: that of the warm-pool container it may have resumed on)
            attrs = await engine.call(api.inspect_container, container_name(sandbox.runtime_id))
            labels = attrs["Config"].get("Labels") or {}
            if (not attrs["State"]["Running"] or labels.get(LABEL_SANDBOX) != sandbox.runtime_id
                    or labels.get(LABEL_INSTANCE) != engine.instance_id):
                raise not_running
            container_id = str(attrs["Id"])
            gvisor = attrs["HostConfig"].get("Runtime") == engine.docker_runtimes[GVISOR]
            if gvisor:
                argv = announcing(argv)
            # The exec's first program starts with the container's environment: unset all of it
            # (Docker removes a variable named without a value), so even ``env`` sees none of it.
            names = {entry.partition("=")[0] for entry in attrs["Config"].get("Env") or []}
            environment = sorted(names - set(CONTAINER_TOOL_ENV)) + [f"{k}={v}" for k, v in CONTAINER_TOOL_ENV.items()]
            exec_id: str = (await engine.call(
                api.exec_create, container_id, argv, stdin=True, stdout=True, stderr=True, workdir=workdir,
                environment=environment,
            ))["Id"]
            raw = await engine.call(api.exec_start, exec_id, socket=True)
        except docker.errors.NotFound:
            raise not_running from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # A container being stopped or removed (a restart) fails execs with 409, or even 500
            # ("is not running: Removal In Progress"): then the sandbox is simply not running.
            if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
                raise not_running from None
            if container_id is not None and not await self._still_running(container_id):
                raise not_running from None
            log.warning("sandbox %s: the Docker engine could not start a process: %s", sandbox.id, exc)
            raise EngineUnavailable("the Docker engine could not start the operation in the sandbox") from None
        return DockerExec(raw, exec_id, container_id, announcing=gvisor)

    async def _still_running(self, container_id: str) -> bool:
        try:
            return await container_running(self.launcher.engine, container_id)
        except Exception:
            return True  # the engine does not answer: that is the problem to report


async def container_running(engine: Any, container_id: str) -> bool:
    """Whether the container runs (not while a restart or delete removes it: Docker may still say Running)."""
    state = await engine.state(container_id)
    return state is not None and bool(state["Running"]) and state.get("Status", "running") == "running"


@functools.lru_cache(maxsize=8)
def _read_source(path: str) -> str:
    return Path(path).read_text()


class LocalProcess(SandboxProcess):
    def __init__(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        super().__init__(timeout)
        self.process = process
        self._stderr_task = asyncio.create_task(self._collect_stderr())

    async def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._keep_stderr(chunk)

    async def write(self, data: bytes) -> bool:
        assert self.process.stdin is not None
        if self.process.stdin.is_closing():
            return False
        try:
            self.process.stdin.write(data)
            async with asyncio.timeout(self.timeout):
                await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        except TimeoutError:
            raise ToolStalled(f"the tool read nothing for {self.timeout:g} s") from None
        return True

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(self.timeout):
                await self.process.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    async def _receive(self) -> bytes:
        assert self.process.stdout is not None
        return await self.process.stdout.read(1 << 16)

    async def _stop(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.kill()  # (a stopped process dies of SIGKILL too)
            except ProcessLookupError:
                pass
        await self.process.wait()
        await asyncio.gather(self._stderr_task, return_exceptions=True)


class DockerProcess(SandboxProcess):
    """An exec's hijacked connection: stdin written raw, stdout/stderr read as multiplexed frames.

    The socket is non-blocking and driven by the event loop; no thread ever waits on a tool.
    """

    def __init__(self, raw: Any, timeout: float, *, container_id: str, exec_id: str, engine: Any,
                 announcing: bool = False) -> None:
        super().__init__(timeout)
        self.raw = raw  # keeps the HTTP response (and so the connection) alive
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            _close_quietly(raw, sock)
            raise EngineUnavailable("in-sandbox tools need a plain (unix or tcp) connection to the Docker engine, not TLS")
        self.sock: socket.socket = sock
        self.sock.setblocking(False)
        self.container_id = container_id
        self.exec_id = exec_id
        self.engine = engine
        #: Under gVisor: the tool's pid inside the sandbox (what is killed there), from the exec's
        #: first line of stdout (collected here until it is read).
        self.sandbox_pid: int | None = None
        self.announcing = announcing
        self._announcement: bytearray | None = bytearray() if announcing else None
        self.loop = asyncio.get_running_loop()
        self._stdin_open = True
        self._pending = bytearray()

    async def write(self, data: bytes) -> bool:
        if not self._stdin_open:
            return False
        # Docker keeps taking an exec's input after its process died (a killed tool), so a write
        # stalls rather than fails: while it makes no progress, the engine says whether the tool
        # runs, and a dead one is told at once, as a closed pipe tells of a local tool.
        sending = asyncio.ensure_future(self.loop.sock_sendall(self.sock, data))
        deadline = self.loop.time() + self.timeout
        try:
            while not sending.done():
                left = deadline - self.loop.time()
                if left <= 0:
                    raise ToolStalled(f"the tool read nothing for {self.timeout:g} s")
                await asyncio.wait({sending}, timeout=min(STALLED_WRITE_CHECK, left))
                if not sending.done() and not await self._exec_running():
                    self._stdin_open = False
                    return False
            sending.result()
        except OSError:
            self._stdin_open = False
            return False
        finally:
            sending.cancel()
        return True

    async def _exec_running(self) -> bool:
        try:
            return bool((await self.engine.call(self.engine.client.api.exec_inspect, self.exec_id)).get("Running"))
        except Exception:
            return True  # the engine does not answer: the write's own timeout decides

    async def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    async def _receive(self) -> bytes:
        if self._announcement is not None:
            rest = await self._read_announcement()
            if rest:
                return rest
        return await self._stdout()

    async def _read_announcement(self) -> bytes:
        """Under gVisor: the exec's first line of stdout is the tool's pid in the sandbox; what follows is the tool's."""
        assert self._announcement is not None
        while b"\n" not in self._announcement and len(self._announcement) < PID_LINE_BYTES:
            chunk = await self._stdout()
            if not chunk:
                break
            self._announcement += chunk
        line, _, rest = bytes(self._announcement).partition(b"\n")
        self._announcement = None
        self.sandbox_pid = announced_pid(line)
        return rest

    async def _stdout(self) -> bytes:
        """The next piece of stdout (``b""`` at its end), collecting stderr on the way."""
        while True:
            header = await self._exactly(8)
            if len(header) < 8:
                return b""
            stream, size = struct.unpack(">BxxxL", header)
            payload = await self._exactly(size)
            if len(payload) < size:
                return b""
            if stream == 2:
                self._keep_stderr(payload)
            elif payload:
                return payload

    async def _exactly(self, size: int) -> bytes:
        """``size`` bytes of the connection (fewer at its end)."""
        while len(self._pending) < size:
            try:
                chunk = await self.loop.sock_recv(self.sock, max(size - len(self._pending), 1 << 16))
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._pending += chunk
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    async def alive(self) -> bool:
        return await container_running(self.engine, self.container_id)

    async def _stop(self) -> None:
        if self._announcement is not None and not self.finished:
            # Killed before its output was read (its input stalled): its pid is waiting there.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(ANNOUNCEMENT_WAIT):
                    self._buffer += await self._read_announcement()
        # Killed before its connection closes: an exec whose connection closed may end for Docker
        # (runsc's host process gone) while the tool, stopped inside the sandbox, stays there.
        try:
            if not self.finished:  # it may be stopped, or stuck: closing its connection alone may leave it
                if self.announcing and self.sandbox_pid is None:
                    # (Under gVisor only the pid inside reaches the tool: runsc's host process is not it.)
                    log.warning("the tool exec %s announced no pid within %g s of its end: only its host "
                                "process is killed", self.exec_id[:12], ANNOUNCEMENT_WAIT)
                try:
                    await signal_exec(self.engine, self.exec_id, signal.SIGKILL, sandbox_pid=self.sandbox_pid)
                except Exception:
                    log.warning("could not kill the tool exec %s", self.exec_id[:12], exc_info=True)
        finally:
            _close_quietly(self.raw, self.sock)


def _close_quietly(raw: Any, sock: Any) -> None:
    for closable in (sock, raw):
        try:
            closable.close()
        except Exception:
            pass
    response = getattr(raw, "_response", None)
    if response is not None:
        try:
            response.close()
        except Exception:
            pass
