"""Another "host" on this machine for network tests: a network namespace joined to ours by a veth pair.

    async with NetworkNamespace(routes=["192.168.80.0/20"]) as other:
        other.address                      # its address (10.x.y.2); ours on the link is other.host_address
        subprocess.Popen(other.exec(["python3", "-c", ...]))    # a process on that host

Created and removed by the test (``ip netns`` and ``ip link`` from iproute2, as root); the routes
given lead through this host, which forwards them.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from typing import Any


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetworkNamespace:
    def __init__(self, *, routes: list[str]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"cgtest-{tag}"
        self.host_link, self.inner_link = f"cgh{tag}", f"cgn{tag}"
        # A /30 of 10.200-249.x.0 (unlikely to meet another test's).
        base = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}"
        self.host_address, self.address = f"{base}.1", f"{base}.2"
        self.routes = routes

    def exec(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    async def __aenter__(self) -> NetworkNamespace:
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
            ip("link", "set", self.inner_link, "netns", self.name)
            ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            inside = ["netns", "exec", self.name, "ip"]
            ip(*inside, "addr", "add", f"{self.address}/30", "dev", self.inner_link)
            ip(*inside, "link", "set", self.inner_link, "up")
            ip(*inside, "link", "set", "lo", "up")
            for route in self.routes:
                ip(*inside, "route", "add", route, "via", self.host_address)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # Removing the namespace removes its end of the pair, and with it ours.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
