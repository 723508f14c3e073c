"""The Docker network of kernels reached over TCP, and the host firewall that keeps it closed.

    network = KernelNetwork(name="code-gateway-kernels", bridge="cg-kernels", peers=["10.0.3.0/24"])
    await network.ensure(engine)           # create or check the network; firewall this host (idempotent)
    network.address(container_attrs)       # a container's IP address on it, as the engine reports it

The network is a Docker bridge created ``internal`` (Docker drops whatever its containers send
anywhere but the bridge: no way out) with inter-container traffic disabled
(``com.docker.network.bridge.enable_icc=false``: no sandbox reaches another). That leaves one
path Docker does not close: the host's own address on the bridge, where every host service
listening on all addresses answers (a gateway on 0.0.0.0, a database). So the host's firewall
(iptables) gets, for the bridge:

- ``INPUT``: nothing from the bridge but replies to connections the host opened (the gateway's
  to its kernels); ``ip6tables``: nothing at all (Docker gives these containers no IPv6 anyway);
- ``DOCKER-USER`` (Docker's chain for its users' rules, evaluated before its own): for each peer
  (another gateway host, a CIDR), connections to the kernel ports only, and their replies back.
  Nothing a sandbox starts reaches a peer.

Every rule carries the comment ``code-gateway <bridge> ...``; rules of peers no longer configured
are removed at the next start. Run on the engine's host (where the bridge is): the gateway does it
at start when ``--DockerProvisioner.host_firewall`` is on (the default), or, for an engine on
another host, ``python -m gateway.provisioners.kernel_network BRIDGE [PEER ...]`` there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from gateway.provisioners.transport import PORT_RANGE

log = logging.getLogger(__name__)

ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_OPTION = "com.docker.network.bridge.name"
LABEL = "code-gateway.kernel-network"

#: Where the rules go (and where rules no longer wanted are looked for).
CHAINS = (("iptables", "INPUT"), ("iptables", "DOCKER-USER"), ("ip6tables", "INPUT"))
#: (table tool, chain, rule, what the comment says it is)
Rule = tuple[str, str, list[str], str]


class KernelNetworkError(RuntimeError):
    """The kernel network cannot be used as it is (a message for the operator)."""


def firewall_rules(bridge: str, peers: Sequence[str]) -> list[Rule]:
    """The host rules that keep ``bridge`` closed except to ``peers`` (CIDRs) on the kernel ports."""
    ports = f"{PORT_RANGE[0]}:{PORT_RANGE[1]}"
    rules: list[Rule] = [
        ("iptables", "INPUT", ["-i", bridge, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED",
                               "-j", "DROP"], "input"),
        ("ip6tables", "INPUT", ["-i", bridge, "-j", "DROP"], "input"),
    ]
    for peer in peers:
        cidr = str(ipaddress.ip_network(peer, strict=False))
        rules.append(("iptables", "DOCKER-USER", ["-s", cidr, "-o", bridge, "-p", "tcp", "--dport", ports,
                                                  "-j", "ACCEPT"], f"peer {cidr}"))
        rules.append(("iptables", "DOCKER-USER", ["-i", bridge, "-d", cidr, "-m", "conntrack", "--ctstate",
                                                  "ESTABLISHED,RELATED", "-j", "ACCEPT"], f"reply {cidr}"))
    return rules


def _comment(bridge: str, what: str) -> str:
    return f"code-gateway {bridge} {what}"


async def _run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode(errors="replace").strip()


async def apply_firewall(bridge: str, peers: Sequence[str]) -> None:
    """Make this host's firewall hold exactly ``firewall_rules(bridge, peers)`` for ``bridge``."""
    wanted = firewall_rules(bridge, peers)
    comments = {(tool, chain, _comment(bridge, what)) for tool, chain, _, what in wanted}
    try:
        for tool, chain, rule, what in wanted:
            spec = [*rule[:-2], "-m", "comment", "--comment", _comment(bridge, what), *rule[-2:]]
            present, _ = await _run(tool, "-w", "-C", chain, *spec)
            if present != 0:
                code, output = await _run(tool, "-w", "-I", chain, "1", *spec)
                if code != 0:
                    raise KernelNetworkError(f"{tool} refused a rule for {bridge} ({output})")
        for tool, chain in CHAINS:
            code, listing = await _run(tool, "-w", "-S", chain)
            for line in listing.splitlines() if code == 0 else ():
                words = shlex.split(line)
                comment = words[words.index("--comment") + 1] if "--comment" in words else ""
                if comment.startswith(_comment(bridge, "")) and (tool, chain, comment) not in comments:
                    await _run(tool, "-w", "-D", chain, *words[2:])  # a peer no longer configured
    except FileNotFoundError as missing:
        raise KernelNetworkError(
            f"cannot firewall the kernel network: {missing.filename} is not installed") from None
    log.info("kernel network %s: host firewall set (%d peer(s))", bridge, len(peers))


class KernelNetwork:
    """The Docker network kernels on the ``tcp`` transport listen on, and how the host guards it."""

    def __init__(self, *, name: str, bridge: str, peers: Sequence[str], firewall: bool) -> None:
        self.name = name
        self.bridge = bridge
        self.peers = [str(ipaddress.ip_network(peer, strict=False)) for peer in peers]
        self.firewall = firewall

    async def ensure(self, engine: Any) -> None:
        """Create the network if missing, refuse one that is not internal and isolated, then firewall it."""
        import docker.errors

        try:
            attrs = await engine.call(engine.client.api.inspect_network, self.name)
        except docker.errors.NotFound:
            try:
                await engine.call(
                    engine.client.api.create_network, self.name, driver="bridge", internal=True,
                    options={ICC_OPTION: "false", BRIDGE_OPTION: self.bridge}, labels={LABEL: "1"},
                    check_duplicate=True)
                log.info("created the kernel network %s (bridge %s)", self.name, self.bridge)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # another gateway created it meanwhile
                    raise
            attrs = await engine.call(engine.client.api.inspect_network, self.name)
        options = attrs.get("Options") or {}
        if attrs.get("Driver") != "bridge" or not attrs.get("Internal") or options.get(ICC_OPTION) != "false":
            raise KernelNetworkError(
                f"the Docker network {self.name} exists but is not an internal bridge with "
                f"{ICC_OPTION}=false: sandboxes on it could reach each other or the outside; remove it "
                f"(docker network rm {self.name}) or name another with --DockerProvisioner.kernel_network")
        self.bridge = options.get(BRIDGE_OPTION) or f"br-{attrs['Id'][:12]}"
        if self.firewall:
            await apply_firewall(self.bridge, self.peers)

    def address(self, container_attrs: dict[str, Any]) -> str:
        """The container's address on this network, from the engine's inspection (never from the sandbox)."""
        networks = (container_attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(self.name) or {}).get("IPAddress") or ""
        if not address:
            raise KernelNetworkError(f"the container has no address on {self.name}")
        return str(ipaddress.ip_address(address))

    def describe(self) -> dict[str, Any]:
        return {"network": self.name, "bridge": self.bridge, "peers": self.peers, "host_firewall": self.firewall}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.provisioners.kernel_network BRIDGE [PEER ...]``: the firewall, on an engine's host."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(apply_firewall(args[0], args[1:]))
    except (KernelNetworkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
