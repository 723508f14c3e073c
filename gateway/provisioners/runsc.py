"""The processes inside a gVisor sandbox, as runsc lists and signals them (exec'd kernels, commands, tools).

    sandbox = await RunscSandbox.of(container_id, sentry, runsc="runsc")   # sentry: O_PATH fd of its /proc
    processes = await sandbox.processes()          # in-sandbox pid -> SandboxProcess(pid, ppid, uid)
    await sandbox.signal(pid, signal.SIGINT)       # that process, inside that sandbox only
    await sandbox.signal_tree(pid, signal.SIGTERM) # it and every process below it, the deepest first
    await sandbox.kill_tree(pid)                   # all of them stopped, then killed: none runs a next step

Why: a process ``docker exec`` starts in a gVisor sandbox lives inside the Sentry (gVisor's
kernel). What the host sees of it is ``runsc-exec``, runsc's own process (root), which waits for
it and exits with its status but does not pass a SIGKILL on: killing it leaves the process
running. So the gateway watches ``runsc-exec`` (its exit is the process's) but signals the
process itself with ``runsc kill --pid``, which reaches only processes of that one container:
whatever pid is named, nothing outside the sandbox can be signalled.

runsc finds its sandboxes in the state directory (``--root``) the engine's runtime uses; that is
read from the Sentry's own command line (``runsc-sandbox --root=...``, written by the engine's
runtime, not by anything inside the sandbox), so no path is configured twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
from collections.abc import Iterable

#: A container id as Docker makes them (runsc is never handed anything else as one).
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
#: Seconds a runsc call may take (it answers in tens of milliseconds; the host may be loaded).
CALL_TIMEOUT = 20.0
#: runsc calls signalling a tree at once.
PARALLEL_CALLS = 8
#: Times a tree being killed is listed again for what it forked meanwhile (a fork bomb is held by the pids limit).
MAX_LISTINGS = 8


class RunscError(RuntimeError):
    """runsc could not do what was asked (its message is safe to log)."""


@dataclasses.dataclass(frozen=True)
class SandboxProcess:
    pid: int
    ppid: int
    uid: int


def state_root(sentry: int) -> str:
    """The ``--root`` of the sandbox's Sentry, whose /proc directory is the descriptor ``sentry``."""
    try:
        with open(os.open("cmdline", os.O_RDONLY | os.O_CLOEXEC, dir_fd=sentry), "rb") as file:
            argv = file.read(1 << 16).split(b"\0")
    except OSError:
        raise RunscError("the sandbox's Sentry is gone") from None
    for at, arg in enumerate(argv):
        if arg.startswith(b"--root="):
            return os.fsdecode(arg.removeprefix(b"--root="))
        if arg in (b"--root", b"-root") and at + 1 < len(argv):
            return os.fsdecode(argv[at + 1])
    raise RunscError("the sandbox's Sentry names no runsc state directory (--root)")


def parse_ps(table: str) -> dict[int, SandboxProcess]:
    """``runsc ps``'s table (``UID PID PPID C TTY STIME TIME CMD``) by pid."""
    lines = table.splitlines()
    if not lines or lines[0].split()[:3] != ["UID", "PID", "PPID"]:
        raise RunscError(f"runsc ps printed no process table: {table[:200]!r}")
    found = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            process = SandboxProcess(pid=int(fields[1]), ppid=int(fields[2]), uid=int(fields[0]))
        except ValueError:
            raise RunscError(f"runsc ps printed a line that is no process: {line[:200]!r}") from None
        found[process.pid] = process
    return found


def below(processes: dict[int, SandboxProcess], pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue.extend(p.pid for p in processes.values() if p.ppid == current and p.pid not in found)
    return found


class RunscSandbox:
    """One gVisor sandbox (a Docker container under runsc), reached through runsc."""

    def __init__(self, container_id: str, root: str, *, runsc: str = "runsc") -> None:
        if not _CONTAINER_ID.fullmatch(container_id):
            raise ValueError(f"not a full container id: {container_id!r}")
        self.container_id = container_id
        self.root = root
        self.runsc = runsc

    @classmethod
    def of(cls, container_id: str, sentry: int, *, runsc: str = "runsc") -> RunscSandbox:
        return cls(container_id, state_root(sentry), runsc=runsc)

    async def _run(self, *args: str) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                self.runsc, f"--root={self.root}", *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:  # (not installed where the gateway runs: DockerProvisioner.runsc_command)
            raise RunscError(f"cannot run {self.runsc}: {exc.strerror}") from None
        try:
            async with asyncio.timeout(CALL_TIMEOUT):  # (wait_for can swallow a cancellation)
                out, err = await process.communicate()
        except BaseException:
            if process.returncode is None:
                process.kill()
                await asyncio.shield(process.wait())
            raise
        if process.returncode != 0:
            raise RunscError(f"runsc {args[0]} failed ({process.returncode}): "
                             f"{err.decode(errors='replace').strip()[-300:]}")
        return out.decode(errors="replace")

    async def processes(self) -> dict[int, SandboxProcess]:
        return parse_ps(await self._run("ps", self.container_id))

    async def signal(self, pid: int, signum: int) -> bool:
        """Send ``signum`` to the sandbox's process ``pid``; False if it is gone."""
        try:
            await self._run("kill", f"--pid={int(pid)}", self.container_id, str(int(signum)))
        except RunscError as exc:
            if "no such process" in str(exc) or "not running" in str(exc):
                return False
            raise
        return True

    async def signal_tree(self, pid: int, signum: int) -> None:
        """Send ``signum`` to ``pid`` and every process below it, the deepest first (the process itself last)."""
        processes = await self.processes()
        if pid in processes:
            for member in reversed(below(processes, pid)):  # (one at a time: in that order)
                await self.signal(member, signum)

    async def kill_tree(self, pid: int) -> None:
        """SIGKILL ``pid`` and what runs below it: every one of them stopped first, then all killed.

        Killed one by one, a shell whose child died before it could still run its next step
        (``sleep 300; echo never > never.txt``). Stopped, none runs again: the tree is listed
        again until no process appeared below it (one forked between a listing and its parent's
        stop), then each gets its SIGKILL. Found while their parents live: orphans are adopted by
        the sandbox's init.
        """
        stopped: list[int] = []
        for _ in range(MAX_LISTINGS):
            processes = await self.processes()
            if pid not in processes and not stopped:
                return
            new = [member for member in below(processes, pid) if member not in stopped]
            if not new:
                break
            await self._each(new, signal.SIGSTOP)
            stopped += new
        await self._each(stopped, signal.SIGKILL)

    async def _each(self, pids: Iterable[int], signum: int) -> None:
        """``signal`` each of ``pids``, a few runsc calls at a time, in no order (a big tree is stopped in a few rounds)."""
        slots = asyncio.Semaphore(PARALLEL_CALLS)

        async def one(pid: int) -> None:
            async with slots:
                await self.signal(pid, signum)

        await asyncio.gather(*(one(pid) for pid in pids))
