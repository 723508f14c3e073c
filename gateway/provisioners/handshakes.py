"""Whether a ZeroMQ socket is connected to the kernel: its connection finished the ZMTP handshake.

A kernel's ROUTER socket drops a message for an identity it has no finished connection from:
ipykernel's stdin sends an ``input_request`` to the identity that sent the ``execute_request``,
so a client whose shell connection is up before its stdin one can have its ``input()`` asked of
no one, and the cell then waits for good. A client that sends nothing before its stdin is up
(``Handshake.wait``) cannot lose the question.

    handshake = Handshake(stdin_socket)   # right after connect: see below
    await handshake.wait(10.0)            # True once connected (again, after a reconnect)
    handshake.close()

The socket's monitor is attached just after it was connected, so the handshake cannot have ended
unseen: over ``ipc`` it passes the kernel's relay, which runs on this loop (busy here now), and
over ``tcp`` it takes at least a round trip and CURVE's four commands. Should it ever be missed,
``wait`` ends at its bound, and the client goes on as it would have without the wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq
from zmq.eventloop.zmqstream import ZMQStream
from zmq.utils.monitor import parse_monitor_message

from gateway.tasks import done_within


class Handshake:
    """Follows ``socket``'s connection to the kernel: up after a handshake, down after a disconnect."""

    EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED

    def __init__(self, socket: zmq.Socket[Any], *, up: bool = False) -> None:
        """``up``: the socket is known to be connected already (its handshake was seen before)."""
        self._socket = socket
        self._up = asyncio.Event()
        if up:
            self._up.set()
        address = f"inproc://handshake-{id(self):x}"
        socket.monitor(address, self.EVENTS)
        # (a plain socket, whatever the context makes: ZMQStream takes no other)
        monitor = socket.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        monitor.connect(address)
        self._monitor = ZMQStream(monitor)
        self._monitor.on_recv(self._heard)

    def _heard(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._up.set()
        elif event == zmq.EVENT_DISCONNECTED:
            self._up.clear()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def renew(self) -> None:
        """The kernel it was connected to is gone: down until the next handshake (the monitor may
        not have told the disconnect yet, and only the next handshake can be the fresh kernel's)."""
        self._up.clear()

    async def wait(self, seconds: float) -> bool:
        """Whether the socket is (or within ``seconds`` gets) connected."""
        return await done_within(self._up.wait(), seconds)

    def close(self) -> None:
        """Stop following (the socket itself is its owner's to close)."""
        if not self._socket.closed:
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
