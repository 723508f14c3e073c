"""``--DockerProvisioner.transport=tcp`` on a real engine: kernels on CurveZMQ, on a network only gateways reach.

The attacks are real: plain and wrong-key ZeroMQ peers against a kernel's ports, and a sandbox
trying another sandbox's kernel and a host service listening on all addresses (reached through
the bridge's host address). Reachability is shown by interface lists and probes of addresses on
this machine only; a refused connection would mean a packet got through, so the probes must time
out (the firewall drops them) while the host, as a control, reaches the same addresses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
import zmq
from jupyter_client.connect import channel_socket_types
from zmq.utils.monitor import recv_monitor_message

from gateway.provisioners.kernel_network import ICC_OPTION, KernelNetworkError
from gateway.provisioners.transport import KERNEL_PORTS
from tests.api.test_jupyter import TOKEN, channels_url, results_once_answered
from tests.gateways import InProcessGateway, create, inside, run
from tests.provisioned import container_of, engine_of
from tests.waiting import until

pytestmark = pytest.mark.docker

NETWORK = "code-gateway-kernels"
TCP = "--DockerProvisioner.transport=tcp"
CHANNELS = ["shell", "iopub", "stdin", "control", "hb"]
HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_DISCONNECTED}


@pytest.fixture
async def gateway(tmp_path: Any, docker_client: Any) -> AsyncIterator[InProcessGateway]:
    async with InProcessGateway(tmp_path / "data", TCP, provisioner="docker") as running:
        yield running


@pytest.fixture
async def alice(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client("alice") as client:
        yield client


async def connection_of(gateway: InProcessGateway, sandbox_id: str) -> dict[str, Any]:
    """What the gateway recorded to reach the sandbox's kernel (its store: keys included)."""
    record = await gateway.app.store.get_sandbox(sandbox_id)
    assert record is not None
    connection: dict[str, Any] = record["kernel"]["connection"]
    return connection


def handshake(address: str, channel: str, curve: tuple[bytes, bytes, bytes] | None, timeout: float = 30) -> str:
    """Connect a ZeroMQ client of the kernel's ``channel`` (a CURVE client with (server key, public, secret),
    or plain) and wait for the ZMTP handshake's outcome, as its socket monitor reports it."""
    sock = zmq.Context.instance().socket(channel_socket_types[channel])
    sock.linger = 0
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    monitor = sock.get_monitor_socket()
    sock.connect(f"tcp://{address}:{KERNEL_PORTS[channel + '_port']}")
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0 and monitor.poll(remaining * 1000):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "succeeded"
            if event in HANDSHAKE_FAILED:
                return "failed"
        return "no outcome"
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()


def keys_of(connection: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    public, secret = connection["curve_publickey"].encode(), connection["curve_secretkey"].encode()
    return public, public, secret


class Listener:
    """A host service on all addresses (as a gateway or a database might be), noting who connected."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("0.0.0.0", 0))
        self.port = self.socket.getsockname()[1]
        self.peers: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, peer = self.socket.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            connection.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


PROBE = """
import concurrent.futures, json, os, socket
def probe(target):
    try:
        socket.create_connection(tuple(target), timeout=3).close()
        return "connected"
    except OSError as error:
        return type(error).__name__
targets = {targets!r}
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    reached = dict(zip(targets, pool.map(probe, targets.values())))
print(json.dumps({{"reached": reached, "ifaces": sorted(os.listdir('/sys/class/net')),
                  "inet6": open('/proc/net/if_inet6').read()}}))
"""


# -- the kernel is reached over TCP, behind CURVE ----------------------------------------------


async def test_kernels_listen_on_the_internal_isolated_network_behind_curve(
    gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any
) -> None:
    sid = (await create(alice))["id"]
    assert (await run(alice, sid, "x = 41"))["status"] == "completed"
    assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}

    network = docker_client.networks.get(NETWORK)
    assert network.attrs["Internal"] is True and network.attrs["Options"][ICC_OPTION] == "false"
    container = container_of(docker_client, sid)
    assert container.attrs["HostConfig"]["NetworkMode"] == NETWORK
    address = container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    connection = await connection_of(gateway, sid)
    assert connection["transport"] == "tcp" and connection["ip"] == address  # the engine's address, as recorded
    assert {name: connection[name] for name in KERNEL_PORTS} == KERNEL_PORTS
    assert len(connection["curve_publickey"]) == 40 and len(connection["curve_secretkey"]) == 40
    assert engine_of(gateway).describe()["transport"] == "tcp"

    facts = await inside(alice, sid, """
import json, os
listening = sorted({int(line.split()[1].split(':')[1], 16) for line in open('/proc/net/tcp').readlines()[1:]
                    if line.split()[3] == '0A' and line.split()[1].startswith('00000000:')})
print(json.dumps({'ifaces': sorted(os.listdir('/sys/class/net')), 'inet6': open('/proc/net/if_inet6').read(),
                  'listening': listening}))
""")
    assert facts["ifaces"] == ["eth0", "lo"] and facts["inet6"] == ""  # one IPv4 interface, no IPv6 at all
    assert facts["listening"] == sorted(KERNEL_PORTS.values())  # on all addresses: the kernel's five sockets only
    # On the engine's host, usage is still read from the container's cgroup (its init's pid checked first).
    usage = (await alice.get(f"/api/v1/sandboxes/{sid}/metrics")).json()
    assert usage["memory"]["current_bytes"] > 10 << 20 and usage["pids"]["current"] >= 2


async def test_plain_and_wrong_key_peers_get_no_handshake(gateway: InProcessGateway,
                                                          alice: httpx.AsyncClient) -> None:
    """On every one of the kernel's ports: no ZeroMQ peer without the kernel's public key gets a
    handshake, not even one holding another sandbox's keys (what a reconnect to a reused address
    would hold); the gateway's own keys get one (the control)."""
    a, b = (await create(alice))["id"], (await create(alice))["id"]
    mine, others = await connection_of(gateway, a), await connection_of(gateway, b)
    stranger_public, stranger_secret = zmq.curve_keypair()
    peers = {"plain": None, "wrong server key": (zmq.curve_keypair()[0], stranger_public, stranger_secret),
             "another sandbox's keys": keys_of(others), "the kernel's keys": keys_of(mine)}
    outcomes = await asyncio.gather(*(
        asyncio.to_thread(handshake, mine["ip"], channel, curve)
        for curve in peers.values() for channel in CHANNELS
    ))
    ports = len(CHANNELS)
    by_peer = {name: outcomes[i * ports:(i + 1) * ports] for i, name in enumerate(peers)}
    assert by_peer == {"plain": ["failed"] * ports, "wrong server key": ["failed"] * ports,
                       "another sandbox's keys": ["failed"] * ports, "the kernel's keys": ["succeeded"] * ports}
    assert (await run(alice, a, "1 + 1"))["result"] == {"text/plain": "2"}  # and the kernel is unharmed


async def test_sandboxes_reach_neither_each_other_nor_the_hosts_services(
    gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any, listener: Listener
) -> None:
    a, b = (await create(alice))["id"], (await create(alice))["id"]
    a_address = (await connection_of(gateway, a))["ip"]
    host_address = docker_client.networks.get(NETWORK).attrs["IPAM"]["Config"][0]["Gateway"]
    targets = {"other kernel": [a_address, KERNEL_PORTS["shell_port"]],
               "other heartbeat": [a_address, KERNEL_PORTS["hb_port"]],
               "host service": [host_address, listener.port],
               "host, closed port": [host_address, 1]}
    facts = await inside(alice, b, PROBE.format(targets=targets))
    # Timeouts, not refusals: the packets are dropped before anything could answer.
    assert facts["reached"] == {name: "TimeoutError" for name in targets}
    assert facts["ifaces"] == ["eth0", "lo"] and facts["inet6"] == ""
    assert listener.peers == []
    # The control: from the host, the same service and the other kernel answer at those addresses.
    for address, port in [(host_address, listener.port), (a_address, KERNEL_PORTS["shell_port"])]:
        await asyncio.to_thread(lambda: socket.create_connection((address, port), timeout=10).close())
    await until(lambda: host_address in listener.peers, what="the listener to note the host's connection")
    assert listener.peers == [host_address]


# -- jupyter_server's channels: CURVE sockets that follow a restarted kernel --------------------


async def test_a_jupyter_websocket_reaches_the_kernel_and_follows_its_restart(gateway: InProcessGateway) -> None:
    """The channels' sockets come from the kernel manager's ``connect_*`` (CURVE clients); a restart puts
    the kernel in a new container with a new address and keys, and the open socket follows it."""
    async with gateway.client(None) as client:
        kernel = (await client.post("/api/kernels", json={"name": "python3"}, headers=TOKEN)).json()
        before = await connection_of(gateway, kernel["id"])
        async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as ws:
            assert await results_once_answered(ws, "x = 6\nx * 7") == ["42"]

            restarted = await client.post(f"/api/kernels/{kernel['id']}/restart", headers=TOKEN)
            assert restarted.status_code == 200, restarted.text
            after = await connection_of(gateway, kernel["id"])
            assert after["curve_publickey"] != before["curve_publickey"]
            # The same socket reaches the new kernel (whose state is gone) once its sockets moved there.
            assert await results_once_answered(ws, "'x' in globals()") == ["False"]


# -- configuration -----------------------------------------------------------------------------


async def test_a_kernel_network_that_is_not_isolated_is_refused(tmp_path: Any, docker_client: Any) -> None:
    """An existing network of that name where sandboxes could reach each other or the outside: no start."""
    network = docker_client.networks.create(f"code-gateway-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        gateway = InProcessGateway(tmp_path / "data", TCP,
                                   f"--DockerProvisioner.kernel_network={network.name}", provisioner="docker")
        with pytest.raises(KernelNetworkError, match=f"{network.name} exists but is not an internal bridge"):
            await gateway.app.startup()
        await gateway.app.store.close()
    finally:
        network.remove()
