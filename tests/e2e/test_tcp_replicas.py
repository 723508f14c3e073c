"""A gateway on another host reaches the kernels over tcp: here, a second network namespace of this machine.

Gateway A (this host) starts a sandbox on ``--DockerProvisioner.transport=tcp`` with the other
host as a peer, and is killed; gateway B, in a network namespace the test creates (a veth pair,
routed through this host), takes the same store and re-attaches the kernel with its state, over
the network: the kernel's connections come from B's address. The sandbox still reaches nothing
of the other host (not even B's own port).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.provisioners.docker import LABEL_INSTANCE
from gateway.provisioners.kernel_network import apply_firewall
from gateway.provisioners.transport import KERNEL_PORTS
from tests.e2e.test_docker_restart import instance_of
from tests.gateways import GatewayProcess, create, inside, run
from tests.netns import NetworkNamespace
from tests.provisioned import containers_labelled
from tests.waiting import until

pytestmark = pytest.mark.docker

TCP = "--DockerProvisioner.transport=tcp"
BRIDGE = "cg-kernels"

#: In the sandbox: the peers of its kernel's established TCP connections (but the kernel's own, on
#: loopback), and whether ``target`` answers.
PEERS_AND_PROBE = """
import json, socket
ports = {ports!r}
def address(hex_address):
    ip = bytes.fromhex(hex_address.split(':')[0])[::-1]
    return '.'.join(str(b) for b in ip)
peers = sorted({{address(line.split()[2]) for line in open('/proc/net/tcp').readlines()[1:]
                if line.split()[3] == '01' and int(line.split()[1].split(':')[1], 16) in ports}} - {{'127.0.0.1'}})
try:
    socket.create_connection(tuple({target!r}), timeout=3).close()
    reached = 'connected'
except OSError as error:
    reached = type(error).__name__
print(json.dumps({{'peers': peers, 'reached': reached}}))
"""


def peer_rules() -> list[str]:
    listing = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if f"code-gateway {BRIDGE} " in line]


@pytest.fixture
async def other_host() -> AsyncIterator[NetworkNamespace]:
    async with NetworkNamespace(routes=["default"]) as namespace:
        yield namespace
    await apply_firewall(BRIDGE, [])  # the peer's rules go with it
    assert peer_rules() == []


async def test_a_replica_on_another_host_reattaches_and_reaches_the_kernel(
    tmp_path: Any, docker_client: Any, other_host: NetworkNamespace
) -> None:
    data = tmp_path / "data"
    here = GatewayProcess(data, TCP, f"--DockerProvisioner.kernel_peers={other_host.address}/32",
                          provisioner="docker")
    there = GatewayProcess(data, TCP, "--DockerProvisioner.host_firewall=false", provisioner="docker",
                           host=other_host.address, wrapper=tuple(other_host.exec([])))
    try:
        await here.start()
        assert len(peer_rules()) == 2  # in, and the replies out
        async with here.client() as alice:
            sid = (await create(alice))["id"]
            assert (await run(alice, sid, "x = 41"))["status"] == "completed"
        assert await here.stop(signal.SIGKILL) == -signal.SIGKILL  # the kernel stays, with its state

        await there.start()
        async with there.client() as alice:
            assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}
            probe = PEERS_AND_PROBE.format(ports=set(KERNEL_PORTS.values()),
                                           target=[other_host.address, int(there.url.rsplit(":", 1)[1])])
            # Once the dead gateway's connections are gone, every connection to the kernel is the other host's.
            facts = await until(lambda: inside(alice, sid, probe), lambda f: f["peers"] == [other_host.address],
                                what="the kernel's connections to come from the other host only")
            assert facts["reached"] == "TimeoutError"  # and the sandbox cannot reach that host
        assert await there.stop() == 0
        assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(data)}") == []
    finally:
        here.kill()
        there.kill()
        for container in containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(data)}"):
            container.remove(force=True)
