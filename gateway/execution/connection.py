"""One long-lived kernel client per sandbox, routing every reply to the request that caused it.

    connection = KernelConnection(kernel_manager.client(), kernel_manager.messages)
    await connection.open(timeout=30)
    with connection.request(connection.execute(code)) as replies:
        channel, msg = await replies.get()      # ("iopub" | "shell", message), in arrival order

Each channel is read as soon as the event loop sees its socket readable (``SocketReader``), so a
request pays no polling cost, and at most ``SocketReader.batch`` messages are read per wake-up
(a kernel flooding its sockets cannot starve the rest of the gateway). Every message passes the
sandbox's ``MessageGate`` (well-formed, signed with its key) and is then filtered by its parent
``msg_id`` (as jupyter_client's own execute loop does): output that other clients of the same
kernel cause (the Jupyter WebSocket, say) never mixes in. When the kernel dies, ``fail()`` wakes
every waiting request with ``KernelGone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient

from gateway.execution.messages import MALFORMED, OVERSIZED, BadMessage, Message, MessageGate
from gateway.execution.replies import Replies

log = logging.getLogger(__name__)


class SetupFailed(RuntimeError):
    """Setup code (``run_silent``) raised in the kernel: the kernel is alive, the code's premise is not."""


class KernelGone(Exception):
    """The kernel stopped answering for good (died, was killed, or the connection closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectTimeout(Exception):
    """The kernel did not answer ``kernel_info`` on both shell and iopub in time."""


#: Run in the kernel once it answers: its iopub send queue unbounded (ipykernel leaves ZMQ's default,
#: 1000 messages, past which its PUB socket drops output without telling anyone). The gateway's own
#: receive queue is bounded (``KernelLauncher.receive_hwm``), so what the gateway has not read yet
#: waits here, in the sandbox's memory and under its limit, and nothing is lost on the way. Set in
#: the iopub thread, the only one that may touch that socket; ZMQ applies it to connected peers too.
UNBOUNDED_IOPUB_QUEUE = """
def _gateway_iopub_queue():
    import threading, zmq
    thread = get_ipython().kernel.iopub_thread
    done = threading.Event()
    def unbound():
        thread.socket.setsockopt(zmq.SNDHWM, 0)
        done.set()
    thread.schedule(unbound)
    if not done.wait(10):
        raise RuntimeError("the iopub thread did not answer")
_gateway_iopub_queue()
del _gateway_iopub_queue
"""


#: Seconds to wait for iopub after the kernel answered on shell before nudging again (as the
#: benchmark's raw client does): its first status often goes out before our subscription arrived.
IOPUB_NUDGE = 0.05


class KernelConnection:
    def __init__(self, client: AsyncKernelClient, gate: MessageGate,
                 on_iopub: Callable[[Message], None] | None = None) -> None:
        self.client = client
        self.gate = gate
        self.sandbox_id = gate.sandbox_id
        #: Sees every iopub message, whoever caused it (the runtime tracks kernel activity with it).
        self.on_iopub = on_iopub
        self.kernel_info: dict[str, Any] = {}
        self._waiting: dict[str, Replies] = {}
        self._shell: SocketReader | None = None
        self._iopub: SocketReader | None = None
        self._gone: KernelGone | None = None
        #: When the kernel last sent anything (``time.monotonic()``), refused messages too.
        self.last_heard = time.monotonic()

    async def open(self, timeout: float) -> None:
        """Start the channels and wait until the kernel answers on shell *and* iopub.

        A SUB socket only receives after its subscription reached the kernel, so we "nudge":
        send ``kernel_info`` until its iopub status comes back, as jupyter_server does.
        Without this the first execution's first outputs could be lost.
        """
        self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        loop = asyncio.get_running_loop()
        self._shell = SocketReader(self.client.shell_channel.socket, self._receiver("shell"), loop)
        self._iopub = SocketReader(self.client.iopub_channel.socket, self._receiver("iopub"), loop)
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with self.request(self.send("kernel_info_request", {})) as replies:
                got_shell = got_iopub = False
                nudge_deadline = min(deadline, loop.time() + 0.5)
                while not (got_shell and got_iopub):
                    remaining = nudge_deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):  # (wait_for can swallow a cancellation)
                            channel, msg = await replies.get()
                    except TimeoutError:
                        break
                    if channel == "shell":
                        got_shell = True
                        self.kernel_info = msg["content"]
                        # The kernel is up: an iopub status lost to a subscription still on its way is
                        # asked for again soon, not after the whole nudge interval.
                        nudge_deadline = min(nudge_deadline, loop.time() + IOPUB_NUDGE)
                    else:
                        got_iopub = True
                if got_shell and got_iopub:
                    await self._unbound_iopub_queue(deadline - loop.time())
                    return
        raise ConnectTimeout(f"kernel of sandbox {self.sandbox_id} did not answer within {timeout:g} s")

    async def _unbound_iopub_queue(self, timeout: float) -> None:
        try:
            await self.run_silent(UNBOUNDED_IOPUB_QUEUE, timeout=max(timeout, 1.0))
        except (RuntimeError, TimeoutError) as exc:  # not an ipykernel we know: it still runs, at its default
            log.warning("sandbox %s: the kernel's iopub send queue stays at ZMQ's default (%s): "
                        "under a flood it may drop output", self.sandbox_id, exc)

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a shell request; its ``msg_id``.

        Not ``client.execute``: jupyter_client's ``Session.send`` wraps an asyncio socket in a new
        blocking shadow socket for every message. The send itself never waits (DEALER queue).
        """
        msg = self.client.session.msg(msg_type, content)
        assert self._shell is not None, "the connection is not open"
        self._shell.send(self.client.session.serialize(msg))
        return str(msg["header"]["msg_id"])

    def execute(self, code: str, *, silent: bool = False, expressions: dict[str, str] | None = None) -> str:
        """An ``execute_request`` as the gateway sends them: no stdin (``input()`` fails at once),
        no abort of later requests after an error (each execution stands alone)."""
        return self.send("execute_request", {
            "code": code, "silent": silent, "store_history": not silent, "user_expressions": expressions or {},
            "allow_stdin": False, "stop_on_error": False,
        })

    async def run_silent(self, code: str, timeout: float, expressions: dict[str, str] | None = None) -> dict[str, Any]:
        """Run setup code unseen: no outputs, no history, no execution count; raise if it fails.

        Returns the values of ``expressions`` (Jupyter's ``user_expressions``), evaluated after the code.
        """
        msg_id = self.execute(code, silent=True, expressions=expressions)
        reply: dict[str, Any] | None = None
        idle = False
        with self.request(msg_id) as replies:
            async with asyncio.timeout(timeout):
                # Until its idle status too: arriving after the reply (another socket), it would
                # make the kernel look busy again (to jupyter_server's nudge, say) once this returned.
                while reply is None or not idle:
                    channel, msg = await replies.get()
                    if channel == "gone":
                        raise msg
                    if channel == "shell":
                        reply = msg
                    elif channel == "iopub" and msg["header"]["msg_type"] == "status":
                        idle = msg["content"].get("execution_state") == "idle"
        assert reply is not None
        if reply["content"].get("status") != "ok":
            raise SetupFailed(f"setup code failed in sandbox {self.sandbox_id}: {reply['content'].get('evalue')}")
        return dict(reply["content"].get("user_expressions") or {})

    @contextlib.contextmanager
    def request(self, msg_id: str, *, max_bytes: int | None = None) -> Iterator[Replies]:
        """Receive every shell and iopub message whose parent is ``msg_id`` while inside the block
        (output past ``max_bytes`` waiting is dropped: see ``Replies``).

        The request must already be sent: nothing can arrive before this registers, because no
        reader runs between a synchronous send and this call.
        """
        if self._gone is not None:
            raise self._gone
        replies = Replies(max_bytes, on_drop=self.gate.outran)
        self._waiting[msg_id] = replies
        try:
            yield replies
        finally:
            self._waiting.pop(msg_id, None)

    @contextlib.contextmanager
    def also(self, msg_id: str, replies: Replies) -> Iterator[None]:
        """Route ``msg_id``'s messages into ``replies`` too while inside the block (a barrier sent
        after a request, whose answer tells when the request's late output has all arrived)."""
        self._waiting[msg_id] = replies
        try:
            yield
        finally:
            self._waiting.pop(msg_id, None)

    def silent_for(self, seconds: float) -> bool:
        """Whether the kernel sent nothing at all (not even messages refused) in the last ``seconds``."""
        return time.monotonic() - self.last_heard >= seconds

    def fail(self, reason: str) -> None:
        """Mark the kernel gone: wake every waiting request and refuse new ones."""
        self._gone = KernelGone(reason)
        for replies in self._waiting.values():
            replies.put_nowait(("gone", self._gone))

    async def close(self) -> None:
        for reader in (self._shell, self._iopub):
            if reader is not None:
                reader.stop()
        self._shell = self._iopub = None
        # Not client.stop_channels(): it would first create (and connect) the channels we never used.
        self.client.shell_channel.stop()
        self.client.iopub_channel.stop()

    def _lost(self, parent_id: str) -> None:
        """A message was cut for its size: its request notes output lost (every waiting request,
        if what was left of it does not say whose it was)."""
        if parent_id:
            waiting = [self._waiting[parent_id]] if parent_id in self._waiting else []
        else:
            waiting = list(self._waiting.values())
        for replies in waiting:
            replies.lost(OVERSIZED)

    def _receiver(self, channel_name: str) -> Callable[[list[bytes]], None]:
        gate = self.gate
        iopub = channel_name == "iopub"

        def receive(frames: list[bytes]) -> None:
            self.last_heard = time.monotonic()
            message = gate.admit(channel_name, frames, self._lost)
            if message is None:
                return
            try:
                if iopub and self.on_iopub is not None:
                    self.on_iopub(message)
                replies = self._waiting.get(message.parent_id)
                if replies is not None:
                    replies.offer(channel_name, message)
            except BadMessage as bad:  # its content or metadata is unreadable
                gate.drop(channel_name, bad)
            except Exception as exc:  # whatever a signed message holds, the reader goes on
                gate.drop(channel_name, BadMessage(MALFORMED, f"unreadable ({exc!r})"))

        return receive


#: pyzmq's socket methods below its Python layer, which makes each ``ZMQ_EVENTS`` answer an enum
#: (and ``& POLLIN`` a Python-level flag operation) and asks ``RCVMORE`` through itself for every
#: frame: a few microseconds a message, on every message of every kernel.
_get = zmq.backend.Socket.get
_recv = zmq.backend.Socket.recv
_EVENTS, _POLLIN, _RCVMORE, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE), int(zmq.NOBLOCK)


class SocketReader:
    """Reads a ZMQ socket straight from the event loop's selector.

    pyzmq's asyncio sockets make a future (and several callbacks) per received message; here the
    socket's file descriptor wakes the loop and waiting messages are read without blocking, at
    most ``batch`` per turn of the loop (the rest on the next turn, after other callbacks).
    ZMQ's descriptor only signals a change: after each read or send, ``ZMQ_EVENTS`` must be
    asked again until no message is left (so a send re-checks too), and a turn that stops early
    schedules the next one itself.
    """

    batch = 256

    def __init__(self, socket: zmq.asyncio.Socket, receive: Callable[[list[bytes]], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)  # the same socket, without asyncio
        self.receive = receive
        self.loop = loop
        self.fd = int(self.socket.getsockopt(zmq.FD))
        self._stopped = False
        loop.add_reader(self.fd, self.drain)
        loop.call_soon(self.drain)  # messages may be waiting already

    def drain(self) -> None:
        if self._stopped:
            return
        socket = self.socket
        try:
            for _ in range(self.batch):
                if not cast(int, _get(socket, _EVENTS)) & _POLLIN:
                    return
                frames = [_recv(socket, _NOBLOCK)]
                while _get(socket, _RCVMORE):  # (the rest of a multipart message is there already)
                    frames.append(_recv(socket, _NOBLOCK))
                self.receive(frames)
            self.loop.call_soon(self.drain)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EAGAIN and not self.socket.closed:
                log.warning("kernel socket read failed: %s", exc)

    def send(self, frames: list[bytes]) -> None:
        """Queue a message (a DEALER never blocks below its high-water mark)."""
        self.socket.send_multipart(frames, zmq.NOBLOCK)
        self.loop.call_soon(self.drain)

    def stop(self) -> None:
        self._stopped = True
        self.loop.remove_reader(self.fd)
