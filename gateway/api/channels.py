"""``/api/kernels/{id}/channels``: the standard Jupyter kernel WebSocket, on jupyter_server's own code.

Both the default JSON protocol and ``v1.kernel.websocket.jupyter.org`` work, with message
signing, ``kernel_info`` nudging and restart notices as in Jupyter Server itself. What we add:
who the caller is (our API keys), that the kernel is one of *their* sandboxes, JSON errors, no
iopub data-rate limit (large plots are never dropped; output is capped per execution instead)
but a bounded send buffer (a client that falls more than ``max_send_buffer`` bytes behind is
closed with code 1008, where jupyter_server would buffer without limit), and that every message
relayed to the client passed the sandbox's ``MessageGate`` (jupyter_server relays
``v1.kernel.websocket.jupyter.org`` frames without checking their signature at all).

Two sockets of one client session (``?session_id=``) never coexist, even when the second arrives
while the first is still in its handshake: jupyter_server replaces an older socket only once it
is open, and the older one then lives on beside the newer. That is what ``jupyter lab
--gateway-url`` does on every notebook it opens (the browser's first handshake fails, as that
server picks no subprotocol; its own socket to us, opened meanwhile, is left behind) and on every
reconnect after a kernel's death. And each socket's kernel connections get an identity of their
own: jupyter_server uses the session id, and the kernel's ROUTER sockets keep the first peer of
an identity and ignore the next, so a client whose stale twin connected first never heard back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import types
from asyncio import Future
from typing import Any, cast

from jupyter_client.session import DELIM, Session
from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
import orjson
from tornado.websocket import WebSocketClosedError
from traitlets import Bool, default
import zmq
from zmq.eventloop.zmqstream import ZMQStream

from gateway.api.backpressure import DEFAULT_SEND_BUFFER, TOO_SLOW_CLOSE_CODE, UnsentBytes, too_slow_reason
from gateway.api.base import JSONErrors, authenticate, check_websocket, origin_allowed
from gateway.api.channel_frames import BAD_FRAME_CLOSE_CODE, V1_PROTOCOL, BadFrame, check_frame
from gateway.api.forwarding import served_elsewhere
from gateway.api.streams import UncopiedFrames
from gateway.auth import KeyRing
from gateway.errors import SandboxNotFound, SandboxNotRunning, SessionReplaced, Unauthorized
from gateway.execution.messages import MALFORMED, BadMessage, Message, MessageGate
from gateway.jsonbytes import LARGE, Buffer, is_object
from gateway.provisioners.handshakes import Handshake
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import SandboxStatus
from gateway.tasks import done_within

log = logging.getLogger(__name__)

#: Seconds a socket waits for its stdin connection to be up before the client may send (``Handshake``).
STDIN_WAIT = 10.0


class KeyRingIdentity(IdentityProvider):
    """Jupyter's identity hook over our API keys: ``Authorization: token|bearer KEY`` or ``?token=KEY``."""

    def __init__(self, keyring: KeyRing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keyring = keyring

    async def get_user(self, handler: Any) -> User | None:
        token = self.get_token(handler) or ""
        try:
            user = await authenticate(self.keyring, token)
        except Unauthorized:
            return None
        # No XSRF cookie check for a token; the browser origin is still checked (check_websocket,
        # KernelChannelsHandler.check_origin), as a page of any site may hold a leaked key.
        handler._token_authenticated = True
        return User(username=user)


#: Metadata of the execute_requests a Jupyter client sends through us (read by kernels/…/startup/10-figures.py).
CLIENT_MARK = {"code_gateway_client": "jupyter"}


class RelaySession(Session):
    """The session a connection relays a client's messages with: its execute_requests marked ``CLIENT_MARK``."""

    def send(self, stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(msg_or_type, dict) and (msg_or_type.get("header") or {}).get("msg_type") == "execute_request":
            msg_or_type = {**msg_or_type, "metadata": {**(msg_or_type.get("metadata") or {}), **CLIENT_MARK}}
        return super().send(stream, msg_or_type, *args, **kwargs)

    def send_raw(self, stream: Any, msg_list: list[Any], *args: Any, **kwargs: Any) -> None:
        # (v1.kernel.websocket.jupyter.org: header, parent header, metadata, content, buffers, packed)
        try:
            marked = len(msg_list) >= 4 and self.unpack(msg_list[0]).get("msg_type") == "execute_request"
            if marked:
                msg_list = [*msg_list[:2], self.pack({**self.unpack(msg_list[2]), **CLIENT_MARK}), *msg_list[3:]]
        except Exception:  # not JSON objects: relayed as they are (the kernel refuses them)
            pass
        super().send_raw(stream, msg_list, *args, **kwargs)


class SandboxChannelsConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's ZMQ <-> WebSocket bridge, finding the registry through the handler."""

    limit_rate = Bool(False, config=True, help="No iopub data-rate limit: outputs are capped per execution.")

    @default("session")
    def _relay_session(self) -> RelaySession:
        return RelaySession(config=self.config)

    @property
    def multi_kernel_manager(self) -> Any:
        # jupyter_server assumes the kernel manager's parent is the mapping manager; ours is the launcher.
        return self.websocket_handler.kernel_manager

    def create_stream(self) -> None:
        """The kernel sockets of this connection, with an identity no other connection has.

        (Shell and stdin share it: ipykernel sends an ``input_request`` to the identity that sent
        the ``execute_request``, and drops it while that identity's stdin connection is not up:
        the socket opens, and after a restart what the client sent goes on, only once it is.)
        """
        identity = self.session.bsession + b"/" + os.urandom(6).hex().encode()
        for channel in ("iopub", "shell", "control", "stdin"):
            stream = getattr(self.kernel_manager, "connect_" + channel)(identity=identity)
            stream.channel = channel
            drain_each_wakeup(stream)
            self.channels[channel] = stream
        self._forget_stdin()
        self._stdin = Handshake(self.channels["stdin"].socket)  # (at once: see its module)
        self._uncount_copies()
        self._counted_in = self.kernel_manager.messages
        self._counted_in.copies_more(1)  # (its iopub is one more copy of each message)

    #: The gate this socket's iopub is counted in as one more copy of each message (``create_stream``).
    _counted_in: MessageGate | None = None

    def _uncount_copies(self) -> None:
        if self._counted_in is not None:
            self._counted_in.copies_more(-1)
            self._counted_in = None

    #: Whether this socket's stdin is connected to the kernel.
    _stdin: Handshake | None = None

    def _forget_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None

    def _with_stdin(self, first: asyncio.Future[None]) -> asyncio.Future[None]:
        """``first``, then this socket's stdin connected (or ``STDIN_WAIT`` gone by)."""
        if self._stdin is None or self._stdin.up:
            return first
        return asyncio.ensure_future(self._stdin_after(first, self._stdin))

    async def _stdin_after(self, first: asyncio.Future[None], stdin: Handshake) -> None:
        await first
        if not await stdin.wait(STDIN_WAIT) and self.channels:
            log.warning("kernel %s: a socket's stdin did not connect in %g s: input() may be asked of no one",
                        self.kernel_id, STDIN_WAIT)

    #: Set once this socket's iopub relayed a message (its subscription reached the kernel).
    _heard: asyncio.Event | None = None
    #: The asking of ``nudge`` (held: it may go on after the socket opened).
    _asking: asyncio.Future[None] | None = None

    def nudge(self) -> asyncio.Future[None]:
        """Resolve once this socket's iopub subscription carries messages, relaying them from the first.

        As jupyter_server does, the kernel is asked for ``kernel_info`` on a socket of its own (the
        reply is not the client's) every half second until iopub delivers something, or for at
        most ``kernel_info_timeout``. A kernel that looks busy is not asked (the request would
        queue behind its execution) and the socket opens at once — but the asking goes on in the
        background, resuming as soon as it looks idle: the state may be stale. (jupyter_server
        itself fetches ``kernel_info`` just before, so a new socket often finds the kernel "busy"
        with it while its idle is on the way; skipping the nudge then, as jupyter_server does,
        left the socket unsubscribed, hearing nothing until the client asked for something.)
        """
        if self._stdin is None:  # (channels from jupyter_server's buffer: connected under the socket before)
            self._stdin = Handshake(self.channels["stdin"].socket, up=True)
        iopub = self.channels["iopub"]
        heard = self._heard = asyncio.Event()
        iopub.on_recv(lambda message: self.handle_outgoing_message(iopub, message))
        asking = self._asking = asyncio.ensure_future(self._ask_until_heard(heard))
        if self.kernel_manager.execution_state != "busy":
            return self._with_stdin(asking)
        opened: asyncio.Future[None] = asyncio.Future()
        opened.set_result(None)
        return self._with_stdin(opened)

    async def _ask_until_heard(self, heard: asyncio.Event) -> None:
        shell = self.kernel_manager.connect_shell()
        try:
            async with asyncio.timeout(self.kernel_info_timeout):
                while not heard.is_set() and self.kernel_id in self.multi_kernel_manager and self.channels:
                    if self.kernel_manager.execution_state != "busy":
                        self.session.send(shell, "kernel_info_request")
                    await done_within(heard.wait(), 0.5)
        except TimeoutError:
            if self.kernel_manager.execution_state != "busy":  # (a busy kernel may well be silent)
                log.warning("kernel %s: no iopub message for a new socket in %g s", self.kernel_id,
                            self.kernel_info_timeout)
        finally:
            shell.close()

    #: What the client sent since the kernel restarted under this socket, held until its iopub
    #: heard the fresh kernel (None: nothing is held).
    _held: list[Any] | None = None

    def on_kernel_restarted(self) -> None:
        """``status: restarting`` to the client, as jupyter_server says it; then what the client
        sends is held, in order, until this socket's iopub hears the fresh kernel.

        ZeroMQ reconnects each of the socket's kernel connections on its own: a request sent now
        (JupyterLab's next cell) reaches the fresh kernel as soon as it is up, but the iopub
        subscription may reach it later, and what the kernel publishes meanwhile goes to no one —
        the cell would run without output and wait for its idle for good. So the kernel is asked
        for ``kernel_info`` on a socket of its own, as for a new socket (``nudge``), until iopub
        relays something; the held messages go then (or once the asking gives up, or the socket closes).
        """
        super().on_kernel_restarted()  # type: ignore[no-untyped-call]  # (flushes the old kernel's iopub first)
        if self._held is not None or not self.channels:
            return  # (already held: the asking under way covers this restart too)
        self._held = []
        if self._heard is not None:
            self._heard.set()  # (an asking for the old kernel ends)
        heard = self._heard = asyncio.Event()
        if self._stdin is not None:
            self._stdin.renew()  # (announced at the death: the fresh kernel is not up yet)
        asking = self._asking = self._with_stdin(asyncio.ensure_future(self._ask_until_heard(heard)))
        asking.add_done_callback(lambda _: self._release_held())

    def on_restart_failed(self) -> None:
        """``status: dead``, as jupyter_server says it; what was held goes on (to a dead kernel, as it would have)."""
        super().on_restart_failed()  # type: ignore[no-untyped-call]
        if self._held is not None and self._heard is not None:
            self._heard.set()

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        if self._held is not None:
            self._held.append(incoming_msg)
            return
        super().handle_incoming_message(incoming_msg)

    def _release_held(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self.handle_incoming_message(message)  # (a closed socket's are dropped there, as jupyter_server does)

    def disconnect(self) -> None:  # type: ignore[override]  # (jupyter_server's own is not a coroutine either)
        if self._heard is not None:
            self._heard.set()  # (no more asking for a socket that is gone)
        self._uncount_copies()
        self._forget_stdin()
        super().disconnect()  # type: ignore[no-untyped-call]

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        """Relay a kernel message only if it is well-formed and signed with this sandbox's key.

        Anything else (garbage, or a message signed with another key) is dropped and counted, and
        so is a signed message jupyter_server's own code fails on (its errors would be logged
        with a traceback each: a kernel could flood the log with them).
        """
        channel = stream if isinstance(stream, str) else str(getattr(stream, "channel", "?"))
        gate = self.kernel_manager.messages
        message = gate.admit(channel, outgoing_msg)
        if message is None:
            return
        if channel == "iopub" and self._heard is not None:
            self._heard.set()
        try:
            text = None if self.subprotocol == V1_PROTOCOL else self._relayed_json(channel, message)
            if text is None:  # (jupyter_server's own code reads bytes only)
                super().handle_outgoing_message(stream, [bytes(part) for part in outgoing_msg])
            else:
                cast(KernelChannelsHandler, self.websocket_handler).write_pieces(text)
        except WebSocketClosedError:
            pass  # the client left; the connection is being closed
        except Exception as exc:
            gate.drop(channel, BadMessage(MALFORMED, f"not relayable ({exc!r})"))


    def _relayed_json(self, channel: str, message: Message) -> list[Buffer] | None:
        """The message as jupyter_server writes it in the default JSON protocol, in pieces (never
        joined: ``write_pieces``), or None to leave it to jupyter_server (it has binary buffers,
        is an error it rewrites, or is not plain JSON).

        jupyter_server checks its signature again (the gate did), parses every part with the
        standard library, turns its dates into datetimes and back and encodes it all again: a
        2 MiB PNG crossed that twice. Here the header and parent header are the gate's, and the
        metadata and content are relayed as the kernel encoded them, each checked to be one JSON
        object (``jsonbytes.is_object``: valid UTF-8, nothing before or after it), so no part can
        end the message early or splice another into it. The pieces joined are what
        ``orjson.dumps`` makes of the message with those two parts as ``orjson.Fragment``s.
        """
        parts = message.parts
        if len(parts) != 5 or self.channels.get(channel) is None or self.channels[channel].closed():
            return None
        if channel == "iopub" and message.msg_type == "error" and not getattr(
                self.multi_kernel_manager, "allow_tracebacks", True):
            return None
        return jupyter_json(message, channel)


def jupyter_json(message: Message, channel: str) -> list[Buffer] | None:
    """A kernel message of 5 parts as jupyter_server writes it in the JSON protocol, in pieces,
    its metadata and content the kernel's own bytes if each is one JSON object (else None).

    The pieces joined are what ``orjson.dumps`` makes of the message with those two parts as
    ``orjson.Fragment``s (no copy of a large part, nor a second parse to check it).
    """
    parts = message.parts
    if not (is_object(parts[3]) and is_object(parts[4])):
        return None  # (not JSON as orjson reads it: NaN, a spliced part, ...; the slow way)
    try:
        head = orjson.dumps({
            "header": message.header, "msg_id": message.header.get("msg_id"), "msg_type": message.msg_type,
            "parent_header": message.parent_header,
        })
        end = b',"buffers":[],"channel":' + orjson.dumps(channel) + b"}"
    except orjson.JSONEncodeError:  # huge integers, ...: the slow way
        return None
    if len(parts[3]) < LARGE:  # (the usual: small pieces are joined, not written one by one)
        return [head[:-1] + b',"metadata":' + parts[3] + b',"content":', parts[4], end]
    return [head[:-1] + b',"metadata":', parts[3], b',"content":', parts[4], end]


class KernelChannelsHandler(JSONErrors, UncopiedFrames, KernelWebsocketHandler):
    def initialize(self, sandboxes: SandboxManager, allow_origins: list[str] | None = None,
                   max_send_buffer: int = DEFAULT_SEND_BUFFER, **_: Any) -> None:
        self.sandboxes = sandboxes
        self.allow_origins = allow_origins or []
        self.max_send_buffer = max_send_buffer
        self._unsent = UnsentBytes()
        self._cut_off = False
        #: The handshake is over (``open`` runs): ``close`` can close the socket.
        self._opened = False
        #: A newer socket of the same session asked to replace this one before it was open.
        self._superseded = False
        #: The client sent a frame that is no Jupyter message: the socket is closing, nothing more is relayed.
        self._refused = False

    def on_message(self, message: str | bytes) -> None:
        """Relay a client's message to the kernel, if it is one (``channel_frames``); else close the
        socket with 1007 and the reason, relaying nothing more from it."""
        if self._refused:
            return
        try:
            check_frame(message, self.selected_subprotocol)
        except BadFrame as bad:
            log.info("kernel %s: closing a channels socket whose client sent a bad frame: %s", self.kernel_id,
                     bad.reason)
            self._refused = True
            self.close(BAD_FRAME_CLOSE_CODE, bad.reason)
            return
        super().on_message(message)  # type: ignore[no-untyped-call]

    def write_message(self, message: bytes | str | dict[str, Any], binary: bool = False) -> Future[None]:
        """Send, unless the client is too far behind: jupyter_server does not await its writes (the
        kernel's messages are read as fast as they come), so what the client has not taken piles
        up in Tornado's buffer; past ``max_send_buffer`` the client is closed (1008) instead."""
        size = len(message) if isinstance(message, (bytes, str)) else 0
        if self._behind(size):
            return _dropped()
        written: Future[None] = super().write_message(message, binary=binary)
        self._unsent.add(size, written)
        return written

    def write_pieces(self, parts: list[Buffer]) -> Future[None]:
        """One text message in pieces, bounded as ``write_message`` is."""
        size = sum(len(part) for part in parts)
        if not self.uncopied(size):
            return self.write_message(b"".join(parts))
        if self._behind(size):
            return _dropped()
        written = self._write_uncopied_message(parts, size)
        self._unsent.add(size, written)
        return written

    def _behind(self, size: int) -> bool:
        """Whether a message of ``size`` bytes is dropped: the socket is closing (the client is too slow)."""
        if not self._cut_off and self._unsent.would_pass(self.max_send_buffer, size):
            self._too_slow()
        return self._cut_off

    def _too_slow(self) -> None:
        log.info("kernel %s: closing a Jupyter channels socket with over %d bytes unsent", self.kernel_id,
                 self.max_send_buffer)
        self.sandboxes.metrics.slow_clients.labels(kind="jupyter_channels").inc()
        self._cut_off = True
        self.close(TOO_SLOW_CLOSE_CODE, too_slow_reason(self.max_send_buffer))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; one still in its handshake is refused or closed as soon as it opens.

        (jupyter_server calls this on the older socket of a session when a newer one arrives;
        Tornado's own ``close`` does nothing before the handshake is done.)
        """
        if not self._opened:
            self._superseded = True
            return
        super().close(code, reason)

    def check_origin(self, origin: str | None = None) -> bool:
        # jupyter_server skips its own check for token-authenticated requests: never skip ours.
        origin = origin if origin is not None else self.request.headers.get("Origin")
        return origin is None or origin_allowed(origin, self.request.host, self.allow_origins)

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        # Our 401 first: jupyter_server would answer a stranger with a bare 403.
        if await ensure_async(self.identity_provider.get_user(self)) is None:
            raise Unauthorized("missing or invalid API key")
        await super().prepare(*args, **kwargs)

    async def get(self, kernel_id: str) -> None:
        check_websocket(self, self.allow_origins)
        if await served_elsewhere(self, self.sandboxes, kernel_id):
            return  # (another replica holds the kernel: the socket is joined to one there)
        context = await self.sandboxes.find_context(kernel_id, self.current_user.username)
        if context is not None:  # one of the sandbox's other kernels (the same checks, its own key)
            if context.failed:
                raise SandboxNotRunning(f"the kernel of context {kernel_id} is dead ({context.failed}): "
                                        f"restart it (POST /api/kernels/{kernel_id}/restart)")
            if kernel_id not in self.kernel_manager:
                raise SandboxNotFound(kernel_id)
            await super().get(kernel_id)  # type: ignore[no-untyped-call]
            return
        sandbox = await self.sandboxes.get(kernel_id, self.current_user.username)
        if sandbox.status == SandboxStatus.PAUSED:  # connecting resumes it (or is 409 without auto_resume)
            sandbox = await self.sandboxes.ready(kernel_id, self.current_user.username)
        if sandbox.status in (SandboxStatus.TERMINATING, SandboxStatus.TERMINATED) or kernel_id not in self.kernel_manager:
            raise SandboxNotFound(kernel_id)
        if sandbox.status == SandboxStatus.FAILED and not self.sandboxes.kernel_restarting(kernel_id):
            # (jupyter_server would wait kernel_info_timeout for it to come alive, then answer 500)
            raise SandboxNotRunning(f"the kernel of sandbox {kernel_id} is dead ({sandbox.status_reason}): "
                                    f"restart it (POST /api/kernels/{kernel_id}/restart)")
        await super().get(kernel_id)  # type: ignore[no-untyped-call]

    async def pre_get(self) -> None:
        await super().pre_get()  # type: ignore[no-untyped-call]  # (registers the session, waits for kernel_info)
        if self._superseded:
            raise SessionReplaced("a newer socket of this session replaced this one")

    async def open(self, kernel_id: str) -> None:
        # Tornado leaves Nagle's algorithm on for WebSockets: a kernel's second message would wait
        # ~40 ms for the client's delayed ACK of the first (every execute pays it).
        self.set_nodelay(True)
        self._opened = True
        await super().open(kernel_id)  # type: ignore[no-untyped-call]
        if self._superseded:  # replaced between its handshake and now (closing earlier would skip the bookkeeping)
            super().close(1000, "a newer socket of this session replaced this one")


def _dropped() -> Future[None]:
    done: Future[None] = Future()
    done.set_result(None)
    return done


def jupyter_settings(keyring: KeyRing, sandboxes: SandboxManager) -> dict[str, Any]:
    """Tornado settings jupyter_server's WebSocket handler reads."""
    from jupyter_server.auth.authorizer import AllowAllAuthorizer

    return {
        "kernel_manager": sandboxes.kernels,
        "kernel_websocket_connection_class": SandboxChannelsConnection,
        "identity_provider": KeyRingIdentity(keyring),
        "authorizer": AllowAllAuthorizer(),  # ownership is checked per kernel in KernelChannelsHandler.get
        "allow_remote_access": True,
    }


def drain_each_wakeup(stream: ZMQStream) -> None:
    """Make ``stream`` read every message waiting when it wakes up (at most ``DRAIN_BATCH``), not one.

    pyzmq's ZMQStream reads one message per wake-up of ZMQ's edge-triggered descriptor. With the
    bounded receive queue (``KernelLauncher.receive_hwm``) it was seen to stop for good once the
    queue had filled under a flood (messages left unread, the descriptor silent), so Jupyter clients
    stopped getting output; reading until ZMQ says nothing is left, as ``SocketReader`` does, keeps it
    going. ``_handle_recv`` is ZMQStream's own hook for a readable socket; the rest of it is unchanged.
    """
    def handle_recv(self: ZMQStream) -> None:
        for _ in range(DRAIN_BATCH):
            if self._flushed or self.socket is None or not int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            message = receive_uncopied(self.socket)
            if self._recv_callback is not None:
                self._run_callback(self._recv_callback, message)

    stream._handle_recv = types.MethodType(handle_recv, stream)  # type: ignore[method-assign]


#: Messages a Jupyter channel stream reads per wake-up (then other callbacks run; it goes on after).
DRAIN_BATCH = 256


def receive_uncopied(socket: zmq.Socket[bytes]) -> list[Buffer]:
    """One waiting message, its metadata, content and buffers that are large left in ZMQ's
    memory (a view of each: the relay writes them to the client as they are), the rest bytes.

    A copy of a 10 MB part costs 3-4 ms on this path, most of it page faults on fresh memory.
    (Only those parts: a frame received uncopied costs a microsecond more, however small.)
    """
    frames: list[Buffer] = [socket.recv(zmq.NOBLOCK)]
    after_delimiter = -1
    while socket.getsockopt(zmq.RCVMORE):
        if after_delimiter < 0:
            after_delimiter = 0 if frames[-1] == DELIM else -1
        else:
            after_delimiter += 1
        if after_delimiter < 3:  # identities, the delimiter, signature, header, parent header
            frames.append(socket.recv(zmq.NOBLOCK))
            continue
        frame = socket.recv(zmq.NOBLOCK, copy=False)
        frames.append(frame.buffer if len(frame) >= LARGE else frame.bytes)
    return frames
