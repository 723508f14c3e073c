"""The ``tcp`` transport: a kernel reached over the network, with ZeroMQ CURVE and its HMAC key.

    inside = prepare(km)                                  # tcp, fixed ports, a fresh keypair on the manager
    cmd = kernel_argv(km.kernel_spec)                     # its argv, run by kernels/transport/curve_kernel.py
    env = bootstrap_env(km.kernel_spec)                   # ... which arrives in the environment
    ... start the kernel with ``inside`` as its connection file; the engine says where it is ...
    info = reach(km, "172.18.0.5")                        # what jupyter_client connects with

Why it is safe on a network only gateways reach (the ``ipc`` transport needs no network at all):

- every socket of the kernel is a CURVE server (``kernels/transport/curve_kernel.py``): a peer
  completes a handshake only if it knows the kernel's public key, made here for each kernel and
  known to the gateway (its store) and the kernel alone; all traffic is encrypted. jupyter_client
  (8.10+) makes every socket it connects a CURVE client with it: our readers, jupyter_server's
  channels (``km.connect_*``) and ZeroMQ's own reconnects. A plain or wrong-key peer gets nothing.
- every message is still signed with the kernel's HMAC key, and checked by the sandbox's
  ``MessageGate``, exactly as on ipc.
- the gateway connects only to the address the engine reports for the sandbox (a container's or
  a pod's IP), a literal IP address, never a name the sandbox could influence. Should that
  address later belong to another sandbox, a reconnect meets a kernel with another key: the
  handshake fails and nothing flows.

The ports are fixed (each kernel has an address of its own), so network policies can name them.
A restarted kernel runs in a new container or pod, at a new address with new keys: the sockets
handed out meanwhile (jupyter_server's channels of an open WebSocket) follow it
(``ConnectedSockets.repoint``), as ipc sockets follow a kernel restarted at the same path.
"""

from __future__ import annotations

import functools
import ipaddress
import weakref
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo

#: The kernel's ports on its own address; ``PORT_RANGE`` is what firewalls and network policies open.
KERNEL_PORTS = {"shell_port": 51001, "iopub_port": 51002, "stdin_port": 51003, "control_port": 51004,
                "hb_port": 51005}
PORT_RANGE = (min(KERNEL_PORTS.values()), max(KERNEL_PORTS.values()))
#: Where the kernel binds: every address of its own network namespace.
BIND_ADDRESS = "0.0.0.0"
#: The kernel-side bootstrap, relative to the kernels directory (the kernelspec's parent).
BOOTSTRAP = Path("transport") / "curve_kernel.py"
BOOTSTRAP_ENV = "CODE_GATEWAY_KERNEL_BOOTSTRAP"
#: Runs the bootstrap that arrived in the environment, and takes it out of the kernel's environment.
RUN_BOOTSTRAP = f"import os; exec(os.environ.pop({BOOTSTRAP_ENV!r}))"


class TransportError(RuntimeError):
    """The tcp transport cannot be used as configured (a message for the operator)."""


def prepare(km: Any) -> dict[str, Any]:
    """Put ``km`` on tcp with the fixed ports and a fresh CURVE keypair; the kernel's own connection file.

    The kernel binds on all of its addresses; ``reach`` later names the one the gateway connects to.
    """
    if not zmq.has("curve"):
        raise TransportError("the tcp transport needs CurveZMQ, which this pyzmq's libzmq lacks")
    public, secret = zmq.curve_keypair()
    km.transport = "tcp"
    for name, port in KERNEL_PORTS.items():
        setattr(km, name, port)
    km.curve_publickey, km.curve_secretkey = public, secret
    km.ip = BIND_ADDRESS
    inside = dict(km.get_connection_info())
    inside["key"] = inside["key"].decode() if isinstance(inside["key"], bytes) else inside["key"]
    inside.pop("kernel_name", None)
    return inside


def reach(km: Any, address: str) -> KernelConnectionInfo:
    """Point ``km`` at the kernel's ``address`` (an IP the engine reported); the connection info to return."""
    km.ip = str(ipaddress.ip_address(address))  # a literal address: never a name to resolve
    info: KernelConnectionInfo = km.get_connection_info()
    return info


@functools.cache
def _bootstrap_text(path: Path) -> str:
    return path.read_text()


def kernel_argv(kernel_spec: Any) -> list[str]:
    """The kernelspec's argv with ``-m ipykernel_launcher`` replaced by the CURVE bootstrap.

    The gateway sends its own copy of it in the environment (``bootstrap_env``; removed from it
    before the kernel starts), so the sandbox image needs only ipykernel.
    """
    argv = list(kernel_spec.argv)
    try:
        at = argv.index("-m")
    except ValueError:
        at = -1
    if at < 0 or argv[at + 1:at + 2] != ["ipykernel_launcher"]:
        raise TransportError(f"the tcp transport runs ipykernel kernels (python -m ipykernel_launcher); "
                             f"the kernelspec runs {argv[:3]}")
    return [*argv[:at], "-c", RUN_BOOTSTRAP, *argv[at + 2:]]


def bootstrap_env(kernel_spec: Any) -> dict[str, str]:
    """The environment variable that carries the bootstrap to ``kernel_argv``'s command."""
    return {BOOTSTRAP_ENV: _bootstrap_text(Path(kernel_spec.resource_dir).parent / BOOTSTRAP)}


class ConnectedSockets:
    """The sockets a kernel manager connected (``connect_*``), so they can follow the kernel when it moves."""

    def __init__(self) -> None:
        #: socket -> (channel, url, the kernel's public key) it was connected with.
        self._sockets: weakref.WeakKeyDictionary[zmq.Socket[Any], tuple[str, str, bytes | None]] = \
            weakref.WeakKeyDictionary()

    def add(self, socket: zmq.Socket[Any], km: Any, channel: str) -> None:
        self._sockets[socket] = (channel, km._make_url(channel), km.curve_publickey)

    def repoint(self, km: Any) -> int:
        """Connect every live socket to where ``km`` now says its channel is, with its current keys.

        A socket already connected so (an ipc kernel restarted at the same path) is left alone.
        Returns how many sockets moved.
        """
        moved = 0
        for socket, (channel, old, old_key) in list(self._sockets.items()):
            new = km._make_url(channel)
            if socket.closed or (new, km.curve_publickey) == (old, old_key):
                continue
            socket.disconnect(old)
            if km.curve_publickey is not None:
                socket.curve_secretkey, socket.curve_publickey = km.curve_secretkey, km.curve_publickey
                socket.curve_serverkey = km.curve_publickey
            socket.connect(new)
            self._sockets[socket] = (channel, new, km.curve_publickey)
            moved += 1
        return moved
