"""Attacks on the gateway's kernel connections from inside a sandbox: sockets swapped for symlinks.

Each attack runs against local, runc and gVisor sandboxes (under gVisor the socket directory the
sandbox owns is a host directory of the gateway's, bind-mounted: its symlinks are host symlinks).

The sandbox owns the directory its kernel binds its sockets in. Code there replaces every
``k-<n>`` by a symlink — to a unix socket of the host (a trap this test listens on), or to
another sandbox's kernel socket through ``/proc/<pid>/root`` — and then makes the gateway
connect again: it cuts the kernel's established connections (so ZeroMQ reconnects on its own),
gets its kernel restarted, dies and is restarted, or waits for the gateway to be SIGKILLed and
restarted (re-attach). The trap must never see a connection, the other sandbox's kernel must
never gain one, and none of its output may reach any client of the attacker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest

from gateway.provisioners.docker import LABEL_SANDBOX
from gateway.provisioners.isolation import HOST_RUN_DIR
from tests.api.test_sockets import connect as stream_socket
from tests.e2e.test_docker_restart import instance_of
from tests.e2e.test_forged_messages import ChannelsListener
from tests.gateways import GatewayProcess, InProcessGateway, create, run
from tests.provisioned import (  # noqa: F401  (fixtures)
    SANDBOX_KINDS,
    container_of,
    containers_labelled,
    docker_gateway_of_each_runtime,
    gateway_of_kind,
    runtime,
)
from tests.waiting import until, until_status

pytestmark = pytest.mark.timeout(400)

#: Replaces each of the kernel's sockets by a symlink to TARGETS[name] (by name, ``k-<n>``).
PLANT = r'''
import os, ipykernel.connect
_dir = os.path.dirname(ipykernel.connect.get_connection_file())
_planted = []
for _name in sorted(os.listdir(_dir)):
    if _name.startswith("k-"):
        os.unlink(os.path.join(_dir, _name))
        os.symlink(TARGETS.get(_name, TARGETS["*"]), os.path.join(_dir, _name))
        _planted.append(_name)
print(len(_planted))
'''

#: The kernel's connections from other processes (the gateway's: SO_PEERCRED names another pid).
OUTSIDERS = r'''
import os, socket, struct
def _outsiders(excluded=()):
    found = {}
    for _fd in os.listdir("/proc/self/fd"):
        try:
            _target = os.readlink(f"/proc/self/fd/{_fd}")
            if not _target.startswith("socket:[") or _target in excluded:
                continue
            _s = socket.socket(fileno=os.dup(int(_fd)))
        except (OSError, ValueError):
            continue
        try:
            if _s.family == socket.AF_UNIX and not _s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                _pid = struct.unpack("3i", _s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
                if _pid != os.getpid():
                    found[_target] = int(_fd)
        except OSError:
            pass
        finally:
            _s.close()
    return found
'''

#: Cuts every connection of the gateway's to the kernel (leaving the listening sockets): ZeroMQ on
#: the gateway's side sees them drop and connects again. (Closing the descriptors under ZeroMQ
#: would abort the kernel; shutting the connections down has the same effect on the peer.) Then
#: it waits until the gateway is connected as often as before, so this execution's own end is
#: heard over the new connections.
CUT = OUTSIDERS + r'''
import time
_before = _outsiders()
for _target, _fd in _before.items():
    _s = socket.socket(fileno=os.dup(_fd))
    try:
        _s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        _s.close()
_deadline = time.monotonic() + 120
while len(_outsiders(_before)) < len(_before) and time.monotonic() < _deadline:
    time.sleep(0.02)
time.sleep(0.2)  # (a reconnected subscriber's subscription follows its handshake at once)
print(len(_before), len(_outsiders(_before)))
'''

# The cut under gVisor: inside gVisor every socket reports the sandbox's own credentials, so the
# kernel cannot tell the gateway's connections apart; the gateway's side cuts them instead
# (``cut_from_the_gateway``). A gVisor kernel whose socket names were unlinked (the symlinks
# planted over them) dies when its connections drop and ZeroMQ connects again (runsc 20221219's
# host sockets): the attack ends the attacker's own kernel, and reaches nothing else. The other
# sandbox's attack skips the cut under gVisor (it would cut the victim's connections too).

#: How many connections the kernel has from other processes.
CONNECTIONS = OUTSIDERS + "print(len(_outsiders()))"


class Trap:
    """A unix socket on the host that records the process id of everyone who connects to it.

    (A local kernel connects to its own shell socket by name, so follows the planted link
    itself: that is the sandbox's own process, which a local sandbox does not confine.)
    """

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="trap-", dir="/tmp")  # short: unix socket paths are < 108 bytes
        self.path = os.path.join(self.directory, "t.sock")
        self.peers: list[int] = []

    async def __aenter__(self) -> Trap:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            credentials = writer.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.peers.append(struct.unpack("3i", credentials)[0])
            writer.close()

        self.server = await asyncio.start_unix_server(accepted, self.path)
        os.chmod(self.path, 0o777)
        os.chmod(self.directory, 0o755)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()
        os.unlink(self.path)
        os.rmdir(self.directory)


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    async with Trap() as listening:
        yield listening


async def cut(client: httpx.AsyncClient, sandbox_id: str) -> None:
    """Cut the gateway's connections to the kernel from inside, and wait until ZeroMQ connected again."""
    done = await run(client, sandbox_id, CUT, timeout=180)
    assert done["status"] == "completed", {key: done.get(key) for key in ("error", "stdout", "stderr")}
    severed, again = map(int, done["stdout"].split())
    assert again >= severed >= 3, done["stdout"]


def gateway_connections(excluded: Iterable[str] = ()) -> dict[str, int]:
    """This process's (the in-process gateway's) connections to kernel sockets: socket inode -> descriptor."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.startswith("socket:[") or target in excluded:
                continue
            duplicate = socket.socket(fileno=os.dup(int(fd)))
        except (OSError, ValueError):
            continue
        try:
            if duplicate.family == socket.AF_UNIX and str(duplicate.getpeername()).startswith("/run/code-gateway/k-"):
                found[target] = int(fd)
        except OSError:
            pass
        finally:
            duplicate.close()
    return found


def cut_from_the_gateway() -> int:
    """Shut down every connection of this process's to a kernel (ZeroMQ connects again); how many."""
    connections = gateway_connections()
    for fd in connections.values():
        duplicate = socket.socket(fileno=os.dup(fd))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            duplicate.close()
    return len(connections)


def plant(targets: dict[str, str]) -> str:
    return f"TARGETS = {targets!r}\n" + PLANT


async def still_served(gateway: InProcessGateway, client: httpx.AsyncClient, sandbox_id: str,
                       listeners: list[ChannelsListener]) -> None:
    """The sandbox's real kernel answers on REST, /stream and the listening Jupyter sockets."""
    assert (await run(client, sandbox_id, "x = 41; x + 1"))["result"] == {"text/plain": "42"}
    async with stream_socket(gateway, sandbox_id) as socket:
        await socket.send(json.dumps({"type": "execute", "id": "s", "code": "print('via stream')"}))
        while (event := json.loads(await asyncio.wait_for(socket.recv(), 60)))["type"] != "execution":
            pass
    assert event["execution"]["stdout"] == "via stream\n"
    waiting = asyncio.gather(*(listener.until_idle_after("via channels") for listener in listeners))
    assert (await run(client, sandbox_id, "print('via channels')"))["status"] == "completed"
    await waiting


@pytest.mark.parametrize("provisioner", SANDBOX_KINDS)
async def test_symlinks_to_a_host_socket_are_never_followed(provisioner: str, tmp_path: Any, trap: Trap) -> None:
    async with gateway_of_kind(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        async with ChannelsListener(gateway, sid, None) as json_ws, \
                ChannelsListener(gateway, sid, "v1.kernel.websocket.jupyter.org") as v1_ws:
            assert (await run(alice, sid, plant({"*": trap.path})))["stdout"] == "5\n"
            # ZeroMQ reconnects by itself after the cut: to the very sockets the kernel bound.
            if provisioner != "gvisor":
                await cut(alice, sid)
                await still_served(gateway, alice, sid, [json_ws, v1_ws])
            else:  # (see: the cut under gVisor)
                assert cut_from_the_gateway() >= 3
                ended = await until_status(alice, sid, "failed", timeout=60)
                assert ended["status_reason"] == "kernel_died", ended
        # The kernel restarted on request, and after dying by itself: connections are made anew.
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
        assert (await run(alice, sid, plant({"*": trap.path})))["stdout"] == "5\n"
        await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "import os; os._exit(1)"})
        await until(lambda: alice.get(f"/api/v1/sandboxes/{sid}"), lambda r: r.json()["status"] == "failed",
                    what="the kernel's death noticed")
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
        assert (await run(alice, sid, "1 + 1"))["result"] == {"text/plain": "2"}
    assert os.getpid() not in trap.peers  # the gateway never connected to it
    if provisioner != "local":
        assert trap.peers == []  # (and nothing in a container can reach a host socket)


@pytest.mark.docker
async def test_symlinks_to_another_sandboxs_kernel_are_never_followed(
    docker_gateway: InProcessGateway, docker_client: Any, trap: Trap, runtime: str
) -> None:
    gateway = docker_gateway
    async with gateway.client("alice") as alice, gateway.client("bob") as bob:
        attacker = (await create(alice))["id"]
        victim = (await create(bob))["id"]
        victim_pid = container_of(docker_client, victim).attrs["State"]["Pid"]
        # (Counted inside the victim; under gVisor, where it cannot be, no output of the victim's
        # reaching the attacker's clients is the proof.)
        connected = int((await run(bob, victim, CONNECTIONS))["stdout"]) if runtime == "runc" else 2
        assert connected >= 2  # (its own gateway's: shell and iopub at least)
        async with ChannelsListener(gateway, attacker, None) as json_ws, \
                ChannelsListener(gateway, attacker, "v1.kernel.websocket.jupyter.org") as v1_ws:
            # Each k-<n> leads to the victim's k-<n>: the attacker's iopub link to the victim's iopub.
            # (Under gVisor the victim's sockets are host sockets, in its host socket directory.)
            victim_dir = (f"/proc/{victim_pid}/root/run/code-gateway" if runtime == "runc"
                          else str(gateway.app.launcher.sandbox_dir(victim) / HOST_RUN_DIR))
            targets = {f"k-{n}": f"{victim_dir}/k-{n}" for n in range(1, 6)}
            assert (await run(alice, attacker, plant({**targets, "*": trap.path})))["stdout"] == "5\n"
            if runtime == "runc":  # (see: the cut under gVisor)
                await cut(alice, attacker)
            # The victim talks; the attacker's clients keep talking to the attacker's own kernel.
            secret = f"victim-{uuid.uuid4().hex}"
            spoken = await run(bob, victim, f"import time\nfor _ in range(20):\n    print({secret!r}); time.sleep(0.05)")
            assert secret in spoken["stdout"]
            await still_served(gateway, alice, attacker, [json_ws, v1_ws])
            for listener in (json_ws, v1_ws):
                assert not any(secret.encode() in frame for frame in listener.raw), listener.protocol
        # No connection of the attacker's reached the victim's kernel.
        if runtime == "runc":
            assert int((await run(bob, victim, CONNECTIONS))["stdout"]) == connected
        executions = (await alice.get(f"/api/v1/sandboxes/{attacker}/executions")).json()["executions"]
        assert secret not in json.dumps(executions)
    assert trap.peers == []


@pytest.mark.docker
async def test_a_restarted_gateway_refuses_sockets_replaced_meanwhile(
    tmp_path: Any, docker_client: Any, trap: Trap, runtime: str
) -> None:
    gateway = GatewayProcess(tmp_path / "data", f"--runtime={runtime}", provisioner="docker")
    try:
        await gateway.start()
        async with gateway.client() as alice:
            attacker = (await create(alice))["id"]
            intact = (await create(alice))["id"]
            assert (await run(alice, intact, "x = 41"))["status"] == "completed"
            assert (await run(alice, attacker, plant({"*": trap.path})))["stdout"] == "5\n"
        await gateway.stop(signal.SIGKILL)
        assert container_of(docker_client, attacker).status == "running"

        await gateway.start()
        async with gateway.client() as alice:
            # The intact sandbox is re-attached with its state; the tampered one is not trusted again.
            assert (await run(alice, intact, "x + 1"))["result"] == {"text/plain": "42"}
            ended = (await alice.get(f"/api/v1/sandboxes/{attacker}")).json()
            assert ended["status"] == "terminated" and ended["status_reason"] == "gateway_restarted", ended
        assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={attacker}") == []
        assert any("not re-attaching" in line and attacker in line for line in gateway.output)
        assert await gateway.stop() == 0
    finally:
        gateway.kill()
        for container in containers_labelled(docker_client, f"code-gateway.instance={instance_of(tmp_path / 'data')}"):
            container.remove(force=True)
    assert trap.peers == []


@pytest.mark.docker
async def test_a_contexts_sockets_swapped_for_symlinks_are_never_followed(
    docker_gateway: InProcessGateway, trap: Trap, runtime: str
) -> None:
    """A context's kernel binds its sockets (``c<id>-<n>``) next to the sandbox kernel's: the sandbox's
    own kernel replaces them by symlinks to a host socket, before the context restarts and while it runs."""
    async with docker_gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        made = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "python"})
        assert made.status_code == 201, made.text
        context = made.json()["id"]
        swap = PLANT.replace('startswith("k-")', 'startswith("c") and not _name.endswith((".json", ".pid"))')
        assert (await run(alice, sid, f"TARGETS = {{'*': {trap.path!r}}}\n" + swap))["stdout"] == "5\n"
        # Restarted: the new kernel binds afresh (the planted names are removed, never followed).
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/contexts/{context}/restart")).status_code == 200
        assert (await run(alice, sid, "1 + 1", context=context))["result"] == {"text/plain": "2"}
        # Swapped while it runs: it is still reached through the sockets it bound.
        assert (await run(alice, sid, f"TARGETS = {{'*': {trap.path!r}}}\n" + swap))["stdout"] == "5\n"
        assert (await run(alice, sid, "2 + 2", context=context))["result"] == {"text/plain": "4"}
        assert (await alice.delete(f"/api/v1/sandboxes/{sid}/contexts/{context}")).status_code == 204
        assert (await run(alice, sid, "3 + 3"))["result"] == {"text/plain": "6"}
    assert trap.peers == []
