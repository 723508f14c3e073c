"""Runs a tool from ``kernels/tools/`` inside a sandbox, next to its kernel but not through it.

    commands = SandboxCommands(launcher)
    process = await commands.start(sandbox, "sandbox_files.py")
    await process.write(b'{"op": "list", "path": ""}\\n')
    await process.close_stdin()
    line = await process.readline()
    await process.close()

A tool runs as the sandbox's user in the sandbox's working directory, with ``python3 -I``:

- ``local`` sandboxes: a subprocess of the gateway (its own Python) in the sandbox's directory,
  with a minimal environment.
- ``docker`` sandboxes: ``docker exec`` in the sandbox's container (found by its
  ``code-gateway.sandbox`` label), where the image holds ``kernels/`` at ``/opt/code-gateway/kernels``.
  The archive API (``docker cp``) cannot be used: the root is read-only and the working
  directory a tmpfs it does not see.

Tools do not queue behind the user's executions and leave no trace in the history.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from gateway.errors import SandboxNotRunning
from gateway.provisioners.base import local_env, workdir_of
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.model import Sandbox

log = logging.getLogger(__name__)

#: Where the sandbox image keeps the repository's ``kernels/`` (see images/python/Dockerfile).
IMAGE_KERNELS_DIR = "/opt/code-gateway/kernels"
#: The working directory of a container sandbox.
CONTAINER_WORKDIR = "/home/sandbox"
#: Most stderr kept from a tool, for error messages.
MAX_STDERR = 8192
#: Seconds a tool may stay silent (no byte in either direction) before it is given up.
IO_TIMEOUT = 60.0


class SandboxProcess(abc.ABC):
    """A tool running inside a sandbox: bytes in on stdin, bytes out on stdout."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._stderr = bytearray()

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
    async def close(self) -> None:
        """Stop the tool if it still runs and free what it held."""

    async def _fill(self) -> None:
        while not self._buffer and not self._eof:
            chunk = await self._receive()
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
        """One line of stdout, with its newline (without one if the output ended first)."""
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

    def _keep_stderr(self, data: bytes) -> None:
        if len(self._stderr) < MAX_STDERR:
            self._stderr += data[: MAX_STDERR - len(self._stderr)]

    def stderr(self) -> str:
        """What the tool wrote to stderr so far (capped)."""
        return self._stderr.decode(errors="replace")


class SandboxCommands:
    """Starts tools in sandboxes, the way each sandbox's provisioner requires."""

    def __init__(self, launcher: KernelLauncher) -> None:
        self.launcher = launcher

    async def start(self, sandbox: Sandbox, tool: str) -> SandboxProcess:
        if sandbox.provisioner == "docker":
            return await self._start_docker(sandbox, tool)
        if sandbox.provisioner == "local":
            return await self._start_local(sandbox, tool)
        raise SandboxNotRunning(
            f"sandbox {sandbox.id} runs on {sandbox.provisioner!r}, where tools cannot run"
        )

    async def _start_local(self, sandbox: Sandbox, tool: str) -> SandboxProcess:
        workdir = workdir_of(self.launcher.sandbox_dir(sandbox.id))
        if not workdir.is_dir():
            raise SandboxNotRunning(f"sandbox {sandbox.id} has no working directory (is it running?)")
        script = Path(self.launcher.kernels_dir) / "tools" / tool
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(script),
            cwd=str(workdir),
            env=local_env(workdir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return LocalProcess(process)

    async def _start_docker(self, sandbox: Sandbox, tool: str) -> SandboxProcess:
        raw, _ = await self.docker_exec(sandbox, ["python3", "-I", f"{IMAGE_KERNELS_DIR}/tools/{tool}"],
                                        CONTAINER_WORKDIR)
        return DockerProcess(raw, self.launcher.engine.call)

    async def docker_exec(self, sandbox: Sandbox, argv: list[str], workdir: str) -> tuple[Any, str]:
        """Start ``argv`` in the sandbox's container: the exec's hijacked connection (stdin in,
        multiplexed stdout/stderr frames out) and the exec's id.

        No user: the exec runs as the container's own user, the one the kernel runs as.
        """
        engine = self.launcher.engine
        if engine is None or engine.client is None:
            raise SandboxNotRunning(
                f"sandbox {sandbox.id} is a container, but this gateway has no Docker engine"
            )
        from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_SANDBOX

        api = engine.client.api
        containers = await engine.call(
            api.containers,
            filters={"label": [f"{LABEL_SANDBOX}={sandbox.id}", f"{LABEL_INSTANCE}={engine.instance_id}"],
                     "status": "running"},
        )
        if not containers:
            raise SandboxNotRunning(f"sandbox {sandbox.id} has no running container")
        exec_id: str = (await engine.call(
            api.exec_create, containers[0]["Id"], argv, stdin=True, stdout=True, stderr=True, workdir=workdir,
        ))["Id"]
        raw = await engine.call(api.exec_start, exec_id, socket=True)
        return raw, exec_id


class LocalProcess(SandboxProcess):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__()
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
            await asyncio.wait_for(self.process.stdin.drain(), IO_TIMEOUT)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await self.process.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def _receive(self) -> bytes:
        assert self.process.stdout is not None
        return await asyncio.wait_for(self.process.stdout.read(1 << 16), IO_TIMEOUT)

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
        await self.process.wait()
        await asyncio.gather(self._stderr_task, return_exceptions=True)


class DockerProcess(SandboxProcess):
    """An exec's hijacked connection: stdin written raw, stdout/stderr read as multiplexed frames.

    Blocking socket calls run in the loop's executor (``call``); the socket has a timeout.
    """

    def __init__(self, raw: Any, call: Any) -> None:
        super().__init__()
        self.raw = raw  # keeps the HTTP response (and so the connection) alive
        self.sock: socket.socket = getattr(raw, "_sock", raw)
        self.sock.settimeout(IO_TIMEOUT)
        self.call = call
        self._stdin_open = True

    async def write(self, data: bytes) -> bool:
        if not self._stdin_open:
            return False
        try:
            await self.call(self.sock.sendall, data)
        except OSError:
            self._stdin_open = False
            return False
        return True

    async def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    async def _receive(self) -> bytes:
        while True:
            frame: tuple[int, bytes] = await self.call(self._next_frame)
            stream, payload = frame
            if stream == -1:
                return b""
            if stream == 2:
                self._keep_stderr(payload)
            elif payload:
                return payload

    def _next_frame(self) -> tuple[int, bytes]:
        """(stream, payload) of the next frame; (-1, b"") at the end. Blocking."""
        header = self._recv_exactly(8)
        if len(header) < 8:
            return -1, b""
        stream, size = struct.unpack(">BxxxL", header)
        return stream, self._recv_exactly(size)

    def _recv_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(min(size - len(data), 1 << 20))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    async def close(self) -> None:
        # Closing the connection ends the exec's stdin and output; a tool stuck writing dies of SIGPIPE.
        await self.call(functools.partial(_close_quietly, self.raw, self.sock))


def _close_quietly(raw: Any, sock: socket.socket) -> None:
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
