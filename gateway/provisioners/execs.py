"""A ``docker exec``'s host pid, and signals to its whole process tree, each isolation's way
(contexts' kernels, commands and tools).

    pid = await exec_pid(engine, exec_id)   # once the engine knows it (ExecNotStarted if never)
    argv = announcing(argv)        # gVisor: the exec's first line of stdout is its pid in the sandbox
    pid = announced_pid(line)
    await signal_exec(engine, exec_id, signal.SIGKILL)                   # runc: through its host process
    await signal_exec(engine, exec_id, signal.SIGKILL, sandbox_pid=pid)  # gVisor: inside the sandbox

Docker has no API to signal an exec. Under runc the exec's process is a host process: it is held
by a pidfd opened before checking again that the exec runs with that pid (no reused pid is
signalled), and its tree is found through /proc. Under gVisor the host process is runsc's
``runsc-exec``, which passes no SIGKILL on (``gateway.provisioners.runsc``): killing it leaves
the command running inside the sandbox. There the command is signalled by its pid inside the
sandbox, through ``runsc kill --pid``; that pid is the first line the exec prints: a shell
notes its ``$$`` and becomes the command, before anything of the user's runs in it. runsc
signals only that container's processes, so whatever the sandbox makes of that line, nothing
outside it is reached (and all of its processes are the sandbox user's own to kill anyway).

A SIGKILL stops the whole tree first, then kills it: killed one by one, a shell whose child died
before it could still run its next step (``sleep 300; echo never > never.txt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING

from gateway.provisioners.runsc import MAX_LISTINGS, RunscError
from gateway.provisioners.usage import process_tree

if TYPE_CHECKING:
    from gateway.provisioners.docker import DockerEngine

log = logging.getLogger(__name__)

#: Run by ``sh -c`` ahead of the command: its pid (the command's, once it execs), then the command.
ANNOUNCE = 'echo "$$" && exec "$@"'
#: The most an announcement may take (digits and a newline).
PID_LINE_BYTES = 32


class ExecNotStarted(RuntimeError):
    """The exec ended without a process, or the engine named none in time."""


async def exec_pid(engine: DockerEngine, exec_id: str, *, within: float | None = None) -> int:
    """The host pid of a started exec, once the engine knows it: at once, or after a while on a busy
    engine. ``within``: at most that many seconds (None: the caller bounds the wait)."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    delay = 0.01
    while True:
        inspected = await engine.call(engine.client.api.exec_inspect, exec_id)
        if inspected.get("Pid"):
            return int(inspected["Pid"])
        if not inspected.get("Running") and inspected.get("ExitCode") is not None:
            raise ExecNotStarted(f"exit code {inspected['ExitCode']}")
        if deadline is not None and loop.time() >= deadline:
            raise ExecNotStarted(f"the engine named no process in {within:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def announcing(argv: list[str]) -> list[str]:
    """``argv``, run by a shell that first prints its own pid (which ``argv`` then has) on stdout."""
    return ["/bin/sh", "-c", ANNOUNCE, "sh", *argv]


def announced_pid(line: bytes) -> int | None:
    """The pid of an ``announcing`` exec's first line, or None if it holds none (not one of an exec: 1 is init)."""
    try:
        pid = int(line.strip())
    except ValueError:
        return None
    return pid if pid > 1 else None


async def signal_exec(engine: DockerEngine, exec_id: str, signum: int, *, sandbox_pid: int | None = None) -> None:
    """Send ``signum`` to an exec's whole process tree if it still runs (a SIGKILL: all stopped, then killed).

    ``sandbox_pid``: the exec runs under gVisor, as that pid in the sandbox (``announcing``).
    """
    info = await engine.call(engine.client.api.exec_inspect, exec_id)
    if not info.get("Running") or not info.get("Pid"):
        return
    if sandbox_pid is not None:
        try:
            sandbox = await engine.runsc_sandbox(str(info["ContainerID"]))
            if signum == signal.SIGKILL:
                await sandbox.kill_tree(sandbox_pid)
            else:
                await sandbox.signal_tree(sandbox_pid, signum)
            return
        except RunscError:
            log.warning("runsc could not signal exec %s in its sandbox", exec_id[:12], exc_info=True)
            if signum != signal.SIGKILL:
                return
        # At least end the exec for Docker (runsc-exec; what runs inside goes with the container).
    try:
        pidfd = os.pidfd_open(int(info["Pid"]))
    except ProcessLookupError:
        return
    try:
        again = await engine.call(engine.client.api.exec_inspect, exec_id)
        if again.get("Running") and again.get("Pid") == info["Pid"]:
            _signal_host_tree(pidfd, int(info["Pid"]), signum)
    finally:
        os.close(pidfd)


def _signal_host_tree(pidfd: int, host_pid: int, signum: int) -> None:
    """Signal the process ``pidfd`` holds and every process below it, the deepest first (a SIGKILL:
    all stopped first, listed again until none appeared below them, as ``RunscSandbox.kill_tree``)."""
    tree: list[int] = []
    for _ in range(MAX_LISTINGS if signum == signal.SIGKILL else 1):
        new = [pid for pid in process_tree(host_pid) if pid not in tree]
        if not new:
            break
        if signum == signal.SIGKILL:
            for pid in new:
                _signal_host(pidfd, host_pid, pid, signal.SIGSTOP)
        tree += new
    for pid in reversed(tree):
        _signal_host(pidfd, host_pid, pid, signum)


def _signal_host(pidfd: int, host_pid: int, pid: int, signum: int) -> None:
    """Signal ``pid`` (the exec's own process through its pidfd)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pid == host_pid:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
