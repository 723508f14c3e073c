"""``sandbox.commands`` through the real SDK: envd's process RPC over our sandbox processes.

Commands run in the sandbox's container as its unprivileged user, with its limits and a minimal
environment (never the kernel's connection key); output streams while they run; they can be
killed, listed, fed stdin and reconnected to; their ``timeout`` kills them, as envd's does.
Killing and timeouts are proven under both runtimes (runc and gVisor, ``sandbox_of_each_runtime``):
the command's whole tree is gone from inside the sandbox, and a shell runs no next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from e2b import AsyncCommandHandle, CommandExitException, RateLimitException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox

from gateway.sandboxes.processes import MAX_COMMANDS, MAX_FOLLOWERS
from tests.api.e2b.conftest import gateway_options
from tests.gateways import GatewayProcess
from tests.provisioned import RUNTIMES
from tests.waiting import until as until_async

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600, envs={"SANDBOX_WIDE": "everywhere"})
    yield created
    created.kill()


@pytest.fixture(scope="module", params=RUNTIMES)
def sandbox_of_each_runtime(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """``sandbox`` (runc), then one on a gateway whose sandboxes run under gVisor."""
    if request.param == "runc":
        yield request.getfixturevalue("sandbox")
        return
    created = Sandbox.create(timeout=600, **gateway_options(request.getfixturevalue("e2b_gvisor_gateway")))
    yield created
    created.kill()


#: Prints the processes (not zombies) of the sandbox whose command line holds argv[1] ("_" for " ").
RUNNING = """
import os, sys
wanted = sys.argv[1].replace("_", " ")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
        state = next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("State:"))
    except (OSError, StopIteration):
        continue
    if wanted in argv and state != "Z":
        print(pid, state, argv)
"""


def live(sandbox: Sandbox, words: str) -> list[str]:
    """The sandbox's own view of its live processes running ``words`` (as a command, or in one)."""
    sandbox.files.write("running.py", RUNNING)
    return sandbox.commands.run(f"python3 running.py {words.replace(' ', '_')}").stdout.splitlines()


def until(condition: Callable[[], object], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_run_with_envs_cwd_and_callbacks(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("work")
    out: list[str] = []
    err: list[str] = []
    result = sandbox.commands.run("echo $ONLY_HERE $SANDBOX_WIDE; pwd; echo oops >&2", envs={"ONLY_HERE": "set"},
                                  cwd="/home/user/work", on_stdout=out.append, on_stderr=err.append)
    assert result.exit_code == 0 and result.stdout.splitlines() == ["set everywhere", "/home/sandbox/work"]
    assert result.stderr == "oops\n" and "".join(out) == result.stdout and err == ["oops\n"]


def test_as_the_sandbox_user_without_the_kernel_key(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("id -u; env")
    uid, *environment = result.stdout.splitlines()
    assert uid == "1000"
    names = {line.split("=", 1)[0] for line in environment}
    assert "CODE_GATEWAY_CONNECTION" not in names and "SANDBOX_WIDE" in names
    assert not any("KEY" in name or "TOKEN" in name for name in names)
    with pytest.raises(SandboxException, match="'root' is not available"):
        sandbox.commands.run("id", user="root")


def test_exit_codes(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stdout == "partial\n"


def test_background_command_streams_live(sandbox: Sandbox) -> None:
    """The command waits for a file that the test writes only after it saw 'ready'."""
    handle = sandbox.commands.run("echo ready; while [ ! -e go ]; do sleep 0.05; done; echo done", background=True)
    seen = []
    for stdout, _, _ in handle:
        if stdout:
            seen.append(stdout)
            if stdout == "ready\n":
                sandbox.files.write("go", "")
    assert seen == ["ready\n", "done\n"] and handle.wait().exit_code == 0


def test_list_kill_stdin_and_connect(sandbox_of_each_runtime: Sandbox) -> None:
    sandbox = sandbox_of_each_runtime
    sleeper = sandbox.commands.run("sleep 300; echo never > killed.txt", background=True)
    reader = sandbox.commands.run("read line; echo got $line; read again; echo then $again", background=True,
                                  stdin=True)
    running = {p.pid: p for p in sandbox.commands.list()}
    assert {sleeper.pid, reader.pid} <= set(running)
    assert running[sleeper.pid].args == ["-l", "-c", "sleep 300; echo never > killed.txt"]
    sandbox.commands.send_stdin(reader.pid, "one\n")
    reader.disconnect()  # the command goes on; connect() picks it up again
    again = sandbox.commands.connect(reader.pid)
    sandbox.commands.send_stdin(reader.pid, "two\n")
    assert again.wait().stdout.endswith("then two\n")
    # Its pid is the one the sandbox sees: the shell running it (sleep below it).
    assert sandbox.commands.run(f"cat /proc/{sleeper.pid}/comm").stdout == "bash\n"
    until(lambda: live(sandbox, "sleep 300"), "the command's sleep did not start")
    assert sandbox.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException):
        sleeper.wait()
    assert sleeper.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(sleeper.pid) is False  # gone, as in E2B
    until(lambda: not live(sandbox, "sleep 300"), "the killed command runs on inside the sandbox")
    assert not sandbox.files.exists("killed.txt")  # (nothing of it is left to write it)


def test_timeout_kills_the_command(sandbox_of_each_runtime: Sandbox) -> None:
    sandbox = sandbox_of_each_runtime
    handle = sandbox.commands.run("sleep 300; echo never > never.txt", background=True, timeout=5)
    assert handle.pid in {p.pid for p in sandbox.commands.list()}  # it started
    with pytest.raises((TimeoutException, CommandExitException)):
        handle.wait()
    deadline = time.monotonic() + 60
    while handle.pid in {p.pid for p in sandbox.commands.list()}:  # (killed at the same deadline, server-side)
        assert time.monotonic() < deadline, "the command outlived its timeout"
        time.sleep(0.2)
    until(lambda: not live(sandbox, "sleep 300"), "the timed-out command runs on inside the sandbox")
    assert not sandbox.files.exists("never.txt")  # (nothing of it is left to write it)
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 300", timeout=2)


FORK_BOMB = """
import os, time
children = []
try:
    for _ in range(400):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as refused:
    print("refused", refused.errno)
print(len(children))
for pid in children:
    os.kill(pid, 9)
"""


def test_commands_share_the_sandbox_limits(sandbox: Sandbox) -> None:
    """The container's pids limit (256) holds for commands too: forking stops short of it."""
    sandbox.files.write("bomb.py", FORK_BOMB)
    refused, spawned = sandbox.commands.run("python3 bomb.py", timeout=60).stdout.split("\n")[:2]
    assert refused == "refused 11" and 100 < int(spawned) < 256
    assert sandbox.run_code("1 + 1").text == "2"  # the kernel, beside it, is fine


async def test_async_commands(e2b_gateway: GatewayProcess) -> None:
    sandbox = await AsyncSandbox.create(timeout=300)
    try:
        lines: list[str] = []
        result = await sandbox.commands.run("for i in 1 2; do echo $i; done", on_stdout=lines.append)
        assert result.stdout == "1\n2\n" and "".join(lines) == "1\n2\n"
        handle = await sandbox.commands.run("sleep 300", background=True)
        assert handle.pid in [p.pid for p in await sandbox.commands.list()]
        assert await sandbox.commands.kill(handle.pid)
    finally:
        await sandbox.kill()


async def test_a_sandbox_s_commands_take_so_many_followers_and_no_more(e2b_gateway: GatewayProcess) -> None:
    """Each follower may hold 4 MiB of output waiting: a client opening connection after connection
    to its commands is refused past ``MAX_FOLLOWERS`` (429, which the SDK raises as a rate limit), a
    command it would start is not started, and a follower that goes makes room for the next."""
    sandbox = await AsyncSandbox.create(timeout=300)
    try:
        first = await sandbox.commands.run("sleep 300", background=True)  # (its start follows it)
        handles = [first] + [await sandbox.commands.connect(first.pid) for _ in range(MAX_FOLLOWERS - 1)]
        with pytest.raises(RateLimitException) as refused:
            await sandbox.commands.connect(first.pid)
        assert f"{MAX_FOLLOWERS} followers already" in str(refused.value)
        assert f"{MAX_FOLLOWERS} followers already" in await refusal(sandbox, "echo started > started.txt")
        assert [p.pid for p in await sandbox.commands.list()] == [first.pid]
        assert not await sandbox.files.exists("started.txt")

        await handles.pop().disconnect()
        # (its slot comes back once the gateway sees it go)
        handles.append(await until_async(lambda: connected(sandbox, first.pid),
                                         what="the disconnected follower's slot", timeout=30, interval=0.2))
        assert await sandbox.commands.kill(first.pid)
        for handle in handles:
            with pytest.raises(CommandExitException):
                await handle.wait()
        # Their slots are given back with the command: a new one is followed at once.
        assert (await sandbox.commands.run("echo fine")).stdout == "fine\n"
    finally:
        await sandbox.kill()


async def connected(sandbox: AsyncSandbox, pid: int) -> AsyncCommandHandle | None:
    """A new follower of command ``pid``; None if the sandbox's commands have all they may."""
    try:
        return await sandbox.commands.connect(pid)
    except RateLimitException:
        return None


async def refusal(sandbox: AsyncSandbox, command: str) -> str:
    """Why a background ``command`` is refused (it must be: 429, the SDK's rate limit)."""
    with pytest.raises(RateLimitException) as refused:
        await sandbox.commands.run(command, background=True)
    return str(refused.value)


async def test_a_sandbox_runs_so_many_commands_at_once_and_no_more(e2b_gateway: GatewayProcess) -> None:
    """Past ``MAX_COMMANDS`` running (followed or not), a command is refused with 429 and not started."""
    sandbox = await AsyncSandbox.create(timeout=300)
    try:
        pids = []
        for _ in range(MAX_COMMANDS):
            handle = await sandbox.commands.run("sleep 300", background=True)
            await handle.disconnect()  # (no follower: the followers' bound is not what refuses the next)
            pids.append(handle.pid)
        # Their followers' slots come back once the gateway sees them go (at a keepalive at the latest).
        why = await until_async(lambda: refusal(sandbox, "echo started > started.txt"),
                                lambda said: "followers already" not in said, what="disconnected followers' slots",
                                interval=0.5)
        assert f"runs {MAX_COMMANDS} commands already" in why
        assert sorted(p.pid for p in await sandbox.commands.list()) == sorted(pids)
        assert not await sandbox.files.exists("started.txt")
        assert await sandbox.commands.kill(pids[0])
        # The killed one's place is free once the gateway has seen it end.
        await until_async(sandbox.commands.list, lambda running: pids[0] not in [p.pid for p in running],
                          what="the killed command's end", timeout=30, interval=0.2)
        assert (await sandbox.commands.run("echo fine")).stdout == "fine\n"
    finally:
        await sandbox.kill()
