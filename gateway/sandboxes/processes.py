"""Commands in a sandbox: processes beside its kernel, in its container, as its user, within its limits.

    processes = SandboxProcesses(commands)
    command = await processes.start(sandbox, ["/bin/bash", "-l", "-c", "ls"], cwd="data", env={"K": "V"})
    async for kind, value in command.follow():     # ("stdout", b"..."), ("stderr", b"..."), ("end", exit code)
        ...
    processes.find(sandbox.id, command.pid)        # while it runs; then it is gone, as in E2B
    await command.signal(signal.SIGKILL)           # the whole process tree

This is what E2B's commands API (envd's process service) runs on. A command gets a fixed,
minimal environment, as our tools do, plus the sandbox's ``env`` and its own: never the
container's (which holds the kernel's connection key) nor the gateway's. ``docker`` sandboxes:
a ``docker exec`` in the sandbox's container (same user, cgroup, pids limit, no network), its
connection read with asyncio (no thread per command); its ``pid`` is the one the sandbox sees.
``local`` sandboxes: a process in its own session in the sandbox's working directory.

Output is not kept: each follower gets what the command writes from the moment it follows, as
from envd, at its own pace (its client's: E2B's stream awaits each write). A follower that falls
more than ``MAX_BEHIND_BYTES`` behind (each chunk waiting counted with ``CHUNK_COST`` besides its
bytes, so a flood of tiny chunks is bounded too) is cut off: what waited for it is dropped at
once and its iteration ends with ``("cut", why)``; the command and its other followers go on.
The followers of one sandbox's commands, all of them, are at most ``MAX_FOLLOWERS`` at once: one
more is refused (``TooManyFollowers``, 429), so what a sandbox's followers can hold is bounded too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import struct
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import InvalidRequest, NotFound, SandboxNotRunning, TooManyCommands, TooManyFollowers
from gateway.execution.outputs import human_size
from gateway.provisioners.base import local_env, workdir_of
from gateway.provisioners.execs import PID_LINE_BYTES, ExecNotStarted, announced_pid, exec_pid, signal_exec
from gateway.sandboxes.commands import CONTAINER_WORKDIR, DockerExec, SandboxCommands
from gateway.sandboxes.model import Sandbox
from gateway.tasks import wait_tasks

log = logging.getLogger(__name__)

#: A container command's environment before the sandbox's and its own (the image's sandbox user).
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "HOME": CONTAINER_WORKDIR, "USER": "sandbox", "LOGNAME": "sandbox", "SHELL": "/bin/bash"}
#: Bytes of output a follower may fall behind before it is cut off.
MAX_BEHIND_BYTES = 4 << 20
#: What holding one chunk for a follower costs besides its bytes (its tuple, its bytes object).
CHUNK_COST = 128
#: Seconds the engine may take to name a started command's process. An exec that ended is told
#: at once; this bounds only an engine that neither starts it nor says it failed. Generous: a
#: loaded engine (50 sandboxes starting) takes seconds, and a refused start is the user's error.
PID_WAIT = 10.0
#: Most commands running in one sandbox at once.
MAX_COMMANDS = 64
#: Most followers of one sandbox's commands at once (so they hold at most 64 × 4 MiB waiting).
MAX_FOLLOWERS = 64
#: Seconds a command under gVisor may take to announce its pid in the sandbox (the host may be loaded).
ANNOUNCE_TIMEOUT = 30.0

Event = tuple[str, Any]


class CommandNotFound(NotFound):
    code = "command_not_found"


class FollowerSlots:
    """The followers of one sandbox's commands, counted against ``limit``."""

    def __init__(self, limit: int = MAX_FOLLOWERS) -> None:
        self.limit = limit
        self.taken = 0

    def check(self) -> None:
        """Raise ``TooManyFollowers`` if one more would not fit."""
        if self.taken >= self.limit:
            raise TooManyFollowers(f"this sandbox's commands have {self.limit} followers already (connections "
                                   "reading their output): close one before following another")

    def take(self) -> None:
        self.check()
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


class Follower:
    """What waits for one follower of a command, bounded: past ``max_bytes`` it is cut off.

        follower = Follower()
        follower.offer("stdout", b"...")     # the command's pump: never blocks; False once cut off
        kind, value = await follower.get()   # the follower, at its own pace
    """

    def __init__(self, max_bytes: int = MAX_BEHIND_BYTES) -> None:
        self.max_bytes = max_bytes
        #: What the events waiting cost (``cost``).
        self.waiting_bytes = 0
        self.cut = False
        self._events: collections.deque[Event] = collections.deque()
        self._arrived = asyncio.Event()

    @staticmethod
    def cost(value: Any) -> int:
        return CHUNK_COST + (len(value) if isinstance(value, bytes) else 0)

    def offer(self, kind: str, value: Any) -> bool:
        """Queue an event, unless it takes the follower past its bound: then cut it off (what waits
        is dropped, ``("cut", why)`` is all it gets next) and return False. Its end always fits, and
        so does any chunk while nothing waits (a follower that keeps up is never behind)."""
        if self.cut:
            return False
        cost = self.cost(value)
        if kind != "end" and self._events and self.waiting_bytes + cost > self.max_bytes:
            self.cut = True
            self._events.clear()
            self.waiting_bytes = 0
            self._put("cut", f"more than {human_size(self.max_bytes)} of output waiting")
            return False
        self.waiting_bytes += cost
        self._put(kind, value)
        return True

    def _put(self, kind: str, value: Any) -> None:
        self._events.append((kind, value))
        self._arrived.set()

    async def get(self) -> Event:
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        kind, value = self._events.popleft()
        if kind != "cut":
            self.waiting_bytes -= self.cost(value)
        return kind, value


@dataclasses.dataclass
class Command:
    """One running command and its followers."""

    sandbox_id: str
    pid: int
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tag: str | None
    channel: CommandChannel
    exit_code: int | None = None
    #: Shared by the sandbox's commands (``SandboxProcesses``).
    slots: FollowerSlots = dataclasses.field(default_factory=FollowerSlots)
    _followers: set[Follower] = dataclasses.field(default_factory=set)
    _ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Why it ended, if not by itself (``killed at its timeout``).
    error: str | None = None

    @property
    def running(self) -> bool:
        return not self._ended.is_set()

    async def follow(self, idle: float | None = None) -> AsyncIterator[Event]:
        """What the command writes from now on, then ``("end", exit_code)``; with ``idle``, also
        ``("keepalive", None)`` after each ``idle`` seconds of silence. ``TooManyFollowers`` (at
        the first step) if the sandbox's commands have all the followers they may."""
        follower = Follower()
        if not self.running:
            yield "end", self.exit_code
            return
        self.slots.take()
        self._followers.add(follower)
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):  # (wait_for can swallow a cancellation)
                        kind, value = await follower.get()
                except TimeoutError:
                    yield "keepalive", None
                    continue
                yield kind, value
                if kind in ("end", "cut"):
                    return
        finally:
            self._followers.discard(follower)
            self.slots.give_back()

    def publish(self, kind: str, value: Any) -> None:
        for follower in list(self._followers):
            if not follower.offer(kind, value):
                self._followers.discard(follower)
                log.info("sandbox %s: a follower of command %d fell more than %s behind: cut off",
                         self.sandbox_id, self.pid, human_size(follower.max_bytes))

    def finish(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self._ended.set()
        self.publish("end", exit_code)

    async def wait(self) -> int | None:
        await self._ended.wait()
        return self.exit_code

    async def write(self, data: bytes) -> None:
        await self.channel.write(data)

    async def close_stdin(self) -> None:
        await self.channel.close_stdin()

    async def signal(self, signum: int) -> None:
        await self.channel.signal(signum)


class CommandChannel:
    """How the gateway talks to one running command (a container exec or a local process)."""

    pid: int

    async def read(self) -> Event | None:
        """The next ``("stdout"|"stderr", bytes)``; None at the end of its output."""
        raise NotImplementedError

    async def exit_code(self) -> int:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close_stdin(self) -> None:
        raise NotImplementedError

    async def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's whole process tree (a SIGKILL: all stopped, then killed)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class StdinClosed(InvalidRequest):
    def __init__(self) -> None:
        super().__init__("the command's stdin is closed (start it with stdin=True to send it input)")


class LocalChannel(CommandChannel):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self._reads: dict[str, asyncio.Task[bytes]] = {}

    async def read(self) -> Event | None:
        streams = {"stdout": self.process.stdout, "stderr": self.process.stderr}
        while True:
            for name, stream in streams.items():
                if stream is not None and name not in self._reads and not stream.at_eof():
                    self._reads[name] = asyncio.ensure_future(stream.read(1 << 16))
            if not self._reads:
                return None
            done, _ = await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in list(self._reads.items()):
                if task in done:
                    del self._reads[name]
                    chunk = task.result()
                    if chunk:
                        return name, chunk

    async def exit_code(self) -> int:
        return await self.process.wait()

    async def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise StdinClosed()
        stdin.write(data)
        await stdin.drain()

    async def close_stdin(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def signal(self, signum: int) -> None:
        self._signal(signum)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)  # its own session: the whole group

    async def close(self) -> None:
        for task in self._reads.values():
            task.cancel()
        if self.process.returncode is None:
            self._signal(signal.SIGKILL)
        await self.process.wait()


class ContainerChannel(CommandChannel):
    """A ``docker exec``'s hijacked connection, read and written with asyncio.

    Its ``pid`` is the one the sandbox sees: under runc the last of the host process's ``NSpid``;
    under gVisor the one the exec announced first (``gateway.provisioners.execs``), which is
    also how it is signalled there.
    """

    def __init__(self, started: DockerExec, engine: Any, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, host_pid: int) -> None:
        self.raw = started.raw  # keeps the HTTP response (and so the connection) alive
        self.exec_id = started.exec_id
        self.engine = engine
        self.reader = reader
        self.writer = writer
        self.host_pid = host_pid
        self.pid = sandbox_pid(host_pid)
        #: Under gVisor: the command's pid inside the sandbox, the one signalled there.
        self.gvisor_pid: int | None = None
        #: What came before or with the announcement, handed out first.
        self._early: list[Event] = []
        self._stdin_open = True

    @classmethod
    async def open(cls, started: DockerExec, engine: Any) -> ContainerChannel:
        sock = getattr(started.raw, "_sock", started.raw)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:  # (the exec's process may still be starting as its connection is handed over)
            host_pid = await exec_pid(engine, started.exec_id, within=PID_WAIT)
        except ExecNotStarted:
            raise SandboxNotRunning("the command did not start in the sandbox's container") from None
        channel = cls(started, engine, reader, writer, host_pid)
        if started.announcing:
            try:
                await channel._read_announcement()
            except BaseException:
                with contextlib.suppress(Exception):
                    await signal_exec(engine, started.exec_id, signal.SIGKILL)
                await channel.close()
                raise
        return channel

    async def _read_announcement(self) -> None:
        """The command's pid in the sandbox, from its first line of stdout; what else came is kept."""
        line = b""
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                while b"\n" not in line and len(line) < PID_LINE_BYTES:
                    event = await self._frame()
                    if event is None:
                        break
                    if event[0] == "stdout":
                        line += event[1]
                    else:
                        self._early.append(event)
        except TimeoutError:
            raise SandboxNotRunning(f"the command did not start in the sandbox within {ANNOUNCE_TIMEOUT:g} s") from None
        first, _, rest = line.partition(b"\n")
        pid = announced_pid(first)
        if pid is None:
            raise SandboxNotRunning("the command did not start in the sandbox's container")
        self.pid = self.gvisor_pid = pid
        if rest:
            self._early.append(("stdout", rest))

    async def read(self) -> Event | None:
        if self._early:
            return self._early.pop(0)
        return await self._frame()

    async def _frame(self) -> Event | None:
        """The next frame of output with something in it; None at the end."""
        while True:
            try:
                header = await self.reader.readexactly(8)
                kind, size = struct.unpack(">BxxxL", header)
                payload = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if payload:
                return ("stderr" if kind == 2 else "stdout"), payload

    async def exit_code(self) -> int:
        for _ in range(100):  # the exec's end is recorded a moment after its output ends
            inspected = await self.engine.call(self.engine.client.api.exec_inspect, self.exec_id)
            if not inspected.get("Running"):
                code = inspected.get("ExitCode")
                return int(code) if code is not None else -1
            await asyncio.sleep(0.05)
        return -1

    async def write(self, data: bytes) -> None:
        if not self._stdin_open:
            raise StdinClosed()
        self.writer.write(data)
        await self.writer.drain()

    async def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    async def signal(self, signum: int) -> None:
        await signal_exec(self.engine, self.exec_id, signum, sandbox_pid=self.gvisor_pid)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        with contextlib.suppress(Exception):
            self.raw.close()


def sandbox_pid(host_pid: int) -> int:
    """The pid the container's own namespace gives ``host_pid`` (its ``NSpid``'s last number)."""
    try:
        with open(f"/proc/{host_pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return host_pid


class SandboxProcesses:
    """The commands running in every sandbox, by sandbox id and pid."""

    def __init__(self, commands: SandboxCommands) -> None:
        self.commands = commands
        self._running: dict[str, dict[int, Command]] = {}
        #: Per sandbox with commands running: its commands' followers.
        self._slots: dict[str, FollowerSlots] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sandbox: Sandbox, argv: list[str], *, cwd: str = "", env: dict[str, str] | None = None,
                    stdin: bool = False, tag: str | None = None, timeout: float | None = None) -> Command:
        """Start ``argv`` in ``sandbox`` in ``cwd`` (relative to its working directory, already checked)."""
        if not argv:
            raise InvalidRequest("a command is required")
        if len(self._running.get(sandbox.id, {})) >= MAX_COMMANDS:
            raise TooManyCommands(f"sandbox {sandbox.id} runs {MAX_COMMANDS} commands already: one must end "
                                  "(or be killed) before another starts")
        wanted = {**sandbox.env, **(env or {})}
        channel = await self._launch(sandbox, argv, cwd, wanted)
        command = Command(sandbox.id, channel.pid, list(argv), cwd, dict(env or {}), tag, channel,
                          slots=self._slots.setdefault(sandbox.id, FollowerSlots()))
        if not stdin:
            await channel.close_stdin()
        self._running.setdefault(sandbox.id, {})[command.pid] = command
        task = asyncio.create_task(self._pump(command, timeout), name=f"command-{sandbox.id}-{command.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("sandbox %s: command %d started", sandbox.id, command.pid)
        return command

    async def _launch(self, sandbox: Sandbox, argv: list[str], cwd: str, env: dict[str, str]) -> CommandChannel:
        if sandbox.provisioner == "docker":
            workdir = f"{CONTAINER_WORKDIR}/{cwd}" if cwd else CONTAINER_WORKDIR
            assigned = [f"{name}={value}" for name, value in {**CONTAINER_ENV, **env}.items()]
            started = await self.commands.docker_exec(sandbox, ["env", "-i", *assigned, *argv], workdir)
            return await ContainerChannel.open(started, self.commands.launcher.engine)
        if sandbox.provisioner == "local":
            workdir_path = workdir_of(self.commands.launcher.sandbox_dir(sandbox.runtime_id))
            if not workdir_path.is_dir():
                raise SandboxNotRunning(f"sandbox {sandbox.id} has no working directory (is it running?)")
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=str(workdir_path / cwd), env={**local_env(workdir_path), **env},
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
                raise InvalidRequest(f"the command could not start: {exc.strerror}") from None
            return LocalChannel(process)
        raise SandboxNotRunning(f"sandbox {sandbox.id} runs on {sandbox.provisioner!r}, where commands cannot run")

    async def _pump(self, command: Command, timeout: float | None) -> None:
        """Hand the command's output to its followers until it ends (killing it at its timeout)."""
        channel = command.channel
        deadline = asyncio.get_running_loop().call_later(timeout, self._expire, command) if timeout else None
        try:
            while (event := await channel.read()) is not None:
                command.publish(*event)
            code = await channel.exit_code()
        except Exception:
            log.exception("sandbox %s: lost command %d", command.sandbox_id, command.pid)
            code = -1
        finally:
            if deadline is not None:
                deadline.cancel()
            self._forget(command)
            await channel.close()
        command.finish(code)

    def check_followers(self, sandbox_id: str) -> None:
        """``TooManyFollowers`` if the sandbox's commands have all the followers they may."""
        slots = self._slots.get(sandbox_id)
        if slots is not None:
            slots.check()

    def _forget(self, command: Command) -> None:
        """``command`` has ended: it is no longer found, and a sandbox with none left is not kept
        (its followers' slots go with it: those left are of ended commands, about to go too)."""
        running = self._running.get(command.sandbox_id, {})
        running.pop(command.pid, None)
        if not running:
            self._running.pop(command.sandbox_id, None)
            self._slots.pop(command.sandbox_id, None)

    def _expire(self, command: Command) -> None:
        command.error = "the command was killed at the end of its timeout"
        task = asyncio.create_task(self._kill(command), name=f"expire-{command.sandbox_id}-{command.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kill(self, command: Command) -> None:
        try:
            await command.signal(signal.SIGKILL)
        except Exception:
            log.warning("sandbox %s: could not kill command %d at its timeout", command.sandbox_id, command.pid,
                        exc_info=True)

    def list(self, sandbox_id: str) -> list[Command]:
        return list(self._running.get(sandbox_id, {}).values())

    def find(self, sandbox_id: str, pid: int | None = None, tag: str | None = None) -> Command:
        for command in self.list(sandbox_id):
            if (pid is not None and command.pid == pid) or (tag is not None and command.tag == tag):
                return command
        raise CommandNotFound(f"process with {'pid ' + str(pid) if pid is not None else 'tag ' + repr(tag)} "
                              "not found")

    async def stop(self) -> None:
        """Kill every command (at the gateway's shutdown) and wait for their ends."""
        for commands in self._running.values():
            for command in list(commands.values()):
                await command.signal(signal.SIGKILL)
        await wait_tasks(list(self._tasks), within=10.0, what="sandbox processes")
