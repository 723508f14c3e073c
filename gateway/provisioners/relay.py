"""A relay between the gateway's ZeroMQ sockets and a kernel's, bounding each message the kernel sends.

libzmq assembles a whole multipart message before its reader sees any part of it, and bounds
only each frame (``ZMQ_MAXMSGSIZE``) and the number of messages queued (HWMs). Code in a
sandbox controls its kernel process: with pyzmq's zero-copy sends it can send one message of a
thousand frames that are all the same 1 MiB buffer, and the gateway would hold 1 GiB before its
own bounds (``Replies``) could see any of it. So every connection to a kernel's ipc socket
passes this relay, which reads what the kernel sends as ZMTP 3.x (RFC 23 and 37: a 64-byte
greeting, then frames of a flags byte, a 1- or 8-byte size and a body) and counts the bytes of
the message in flight. A message that passes ``max_message_bytes`` is ended for libzmq at a
frame boundary by one last frame, ``CUT``, and the rest of it is read from the kernel and
thrown away as it comes; the gateway's ``MessageGate`` drops a message ending with ``CUT`` and
the execution it belongs to notes that output was lost. What the gateway sends the kernel
passes unchanged. Bodies are forwarded in the chunks they arrive in (only headers are parsed),
so a large output costs one more copy, never a frame held whole. Each connection is two asyncio
transports with buffered protocols (``_Side``), all reading into one buffer: a message costs the
loop one read and one send, an idle connection holds no buffer.

    relay = Relay(listener, "/proc/self/fd/7", max_message_bytes=40 << 20, name="k-1")
    relay.start()          # ZeroMQ connects to the listener; each connection gets one to the kernel
    relay.close()          # both sides of every connection are closed, the listener too
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: The last frame of a message the relay cut: a 1-frame body no kernel sends at the end of a message.
CUT = b"\x00code-gateway: the rest of this message was dropped: it passed the gateway's bound\x00"
#: The frame that ends a cut message: flags 0 (the last frame, short), its size, ``CUT``.
_CUT_FRAME = bytes([0, len(CUT)]) + CUT

# ZMTP 3.x frame flags (RFC 23 section "Framing"; the other bits are reserved, libzmq ignores them).
MORE, LONG, COMMAND = 1, 2, 4
GREETING_BYTES = 64
#: What a greeting must hold where it is fixed: the signature's first and last bytes, the major
#: version (3: an older peer would make libzmq fall back to another framing), and the NULL mechanism.
_MECHANISM = b"NULL".ljust(20, b"\0")
#: Bytes a frame costs libzmq besides its body (a ``zmq_msg_t`` is 64): a message of many empty
#: frames is bounded too.
FRAME_COST = 64
#: A command (READY with its properties, PING, ERROR) is small; a larger one ends the connection.
MAX_COMMAND_BYTES = 64 << 10
#: Bytes read from a socket at a time.
CHUNK = 256 << 10


class ProtocolError(ValueError):
    """The kernel's side does not speak ZMTP 3.x with the NULL mechanism as libzmq 4 does."""


def _check_greeting(greeting: bytes) -> None:
    """Refuse the first bytes of a greeting (however many arrived) unless they can begin a ZMTP 3.x one."""
    if greeting[:1] not in (b"", b"\xff") or greeting[9:10] not in (b"", b"\x7f"):
        raise ProtocolError("not a ZMTP 3 greeting")
    if greeting[10:11] and greeting[10] < 3:
        raise ProtocolError(f"ZMTP version {greeting[10]}, 3 or later expected")
    mechanism = greeting[12:32]
    if mechanism != _MECHANISM[:len(mechanism)]:
        raise ProtocolError(f"mechanism {mechanism!r}, NULL expected")


class MessageCutter:
    """Splits the byte stream a kernel sends into ZMTP frames and passes it on, cutting messages
    that pass ``max_message_bytes`` (counting ``FRAME_COST`` per frame).

    ``feed`` takes each chunk as it arrives and returns what to forward, in order: views of the
    chunk (one for the whole chunk unless something was cut out of it) and the ``CUT`` frame.
    The views are valid as long as the chunk is: forward them before reading the next one.
    """

    def __init__(self, max_message_bytes: int, on_cut: Callable[[], None] | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_cut = on_cut
        #: Messages cut so far.
        self.cuts = 0
        self._greeting = b""
        #: The bytes of a frame header that arrived at the end of a chunk, waiting for the rest.
        self._header = b""
        self._body_left = 0
        self._forwarding_body = True
        self._last_frame = False
        self._command = False
        #: Bytes (with ``FRAME_COST`` each frame) of the message in flight forwarded so far.
        self._in_flight = 0
        #: The message in flight was cut: its remaining frames are thrown away.
        self._discarding = False

    def feed(self, chunk: memoryview) -> list[memoryview | bytes]:
        out: list[memoryview | bytes] = []
        # The range of ``chunk`` forwarded unchanged since the last piece added to ``out``.
        run_start = run_end = 0
        pos, end = 0, len(chunk)
        while pos < end:
            if len(self._greeting) < GREETING_BYTES:
                n = min(GREETING_BYTES - len(self._greeting), end - pos)
                self._greeting += chunk[pos:pos + n]
                _check_greeting(self._greeting)  # (before libzmq sees any of it)
                pos += n
                run_end = pos
            elif self._body_left:
                n = min(self._body_left, end - pos)
                if self._forwarding_body:
                    if run_end != pos:
                        if run_end > run_start:
                            out.append(chunk[run_start:run_end])
                        run_start = pos
                    run_end = pos + n
                pos += n
                self._body_left -= n
                if not self._body_left:
                    self._end_frame()
            else:
                start = pos
                header: bytes | memoryview
                if self._header:
                    header = self._header + chunk[pos:pos + 9 - len(self._header)]
                else:
                    header = chunk[pos:pos + 9]
                size_bytes = 8 if header[0] & LONG else 1
                if len(header) < 1 + size_bytes:  # the rest of the header is in the next chunk
                    self._header = bytes(header)
                    pos = end
                    continue
                taken = 1 + size_bytes - len(self._header)
                pos += taken
                flags = header[0]
                size = int.from_bytes(header[1:1 + size_bytes], "big")
                forward = self._begin_frame(flags, size)
                if forward is None:  # the frame is forwarded: its header as it came
                    if self._header:
                        if run_end > run_start:
                            out.append(chunk[run_start:run_end])
                        out.append(self._header)
                        run_start = start
                    elif run_end != start:
                        if run_end > run_start:
                            out.append(chunk[run_start:run_end])
                        run_start = start
                    run_end = pos
                elif forward:
                    if run_end > run_start:
                        out.append(chunk[run_start:run_end])
                    out.append(forward)
                    run_start = run_end = pos
                self._header = b""
                if not size:
                    self._end_frame()
        if run_end > run_start:
            out.append(chunk[run_start:run_end])
        return out

    def _begin_frame(self, flags: int, size: int) -> bytes | None:
        """Decide on a frame from its header: None to forward it, else bytes to forward instead
        (``b""``: nothing) while its body is thrown away."""
        self._body_left = size
        self._command = bool(flags & COMMAND)
        self._last_frame = not flags & MORE
        self._forwarding_body = True
        if self._command:  # (not part of any message: libzmq handles each on its own)
            if size > MAX_COMMAND_BYTES:
                raise ProtocolError(f"a command of {size} bytes")
            return None
        if self._discarding:
            self._forwarding_body = False
            return b""
        self._in_flight += size + FRAME_COST
        if self._in_flight <= self.max_message_bytes:
            return None
        self._discarding, self._forwarding_body = True, False
        self.cuts += 1
        if self.on_cut is not None:
            self.on_cut()
        return _CUT_FRAME

    def _end_frame(self) -> None:
        if not self._command and self._last_frame:
            self._in_flight = 0
            self._discarding = False


class Relay:
    """Accepts connections on ``listener`` and relays each to the kernel's socket at ``target``
    (``/proc/self/fd/<n>``: the socket verified by descriptor), cutting messages the kernel sends
    past ``max_message_bytes``. Either side ending ends both.

    Each side of a connection is an asyncio transport with a buffered protocol (``_Side``): the
    loop reads a socket into the thread's read buffer whenever it is readable, and what was read
    goes to the other side's socket at once, with no task, future or re-registration per read (a
    kernel's messages cost the gateway's loop what they cost it without the relay, near enough).
    A side whose peer cannot take more (ZeroMQ's queue full) stops reading until it can, so a
    connection holds at most ``HIGH_WATER`` of unsent bytes, and an idle one no buffer at all.
    """

    def __init__(self, listener: socket.socket, target: str, *, max_message_bytes: int, name: str) -> None:
        self.listener = listener
        self.target = target
        self.max_message_bytes = max_message_bytes
        #: What log lines call it (the link's path: it names the sandbox).
        self.name = name
        #: Messages cut on all its connections so far.
        self.cuts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._sides: set[_Side] = set()
        #: Connections accepted whose ``_connect`` has not begun: a task cancelled before its first
        #: step never runs its body, so ``close`` closes these itself.
        self._accepted: set[socket.socket] = set()
        self._refusal_logged = False

    def start(self) -> None:
        self.listener.setblocking(False)
        self._spawn(self._accept(), closing=self.listener)

    def close(self) -> None:
        """End every connection and stop listening. Each socket is closed by its transport, or once
        the task using it is done (closing it here, under a pending read, could later unregister a
        reused descriptor)."""
        for task in list(self._tasks):
            task.cancel()
        for side in list(self._sides):
            side.abort()
        for client in self._accepted:
            client.close()  # (nothing reads it yet: no transport or pending read has its descriptor)
        self._accepted.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], closing: socket.socket | None = None) -> None:
        """Run ``coroutine`` as one of the relay's tasks (cancelled by ``close``); ``closing`` is
        closed when it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if closing is not None:
            task.add_done_callback(lambda _: closing.close())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.listener)
            self._accepted.add(client)
            self._spawn(self._connect(client))  # (its transport closes ``client``, or it does if it fails)

    async def _connect(self, client: socket.socket) -> None:
        """Connect ``client`` (ZeroMQ's) to the kernel, then hand both sockets to transports."""
        self._accepted.discard(client)  # (this task closes it from here on)
        loop = asyncio.get_running_loop()
        kernel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        kernel.setblocking(False)
        client.setblocking(False)
        to_kernel = _Side(self, client, cutter=None)
        from_kernel = _Side(self, kernel, cutter=MessageCutter(self.max_message_bytes, on_cut=self._cut))
        to_kernel.peer, from_kernel.peer = from_kernel, to_kernel
        try:
            await loop.sock_connect(kernel, self.target)
            await loop.connect_accepted_socket(lambda: to_kernel, client)
            await loop.connect_accepted_socket(lambda: from_kernel, kernel)
        except BaseException as failed:
            for side, sock in ((to_kernel, client), (from_kernel, kernel)):
                if side.transport is not None:
                    side.transport.abort()  # (the transport owns its socket now)
                else:
                    sock.close()
            if isinstance(failed, OSError):  # the kernel is gone (or not listening): ZeroMQ connects again later
                log.debug("%s: no connection to the kernel's socket: %s", self.name, failed)
                return
            raise

    def _cut(self) -> None:
        self.cuts += 1
        log.debug("%s: cut a kernel message past %d bytes", self.name, self.max_message_bytes)

    def _refused(self, refused: ProtocolError) -> None:
        # The kernel's process is the sandbox's: it may send anything. Logged once per socket.
        (log.debug if self._refusal_logged else log.warning)("%s: closed a connection to the kernel: %s",
                                                             self.name, refused)
        self._refusal_logged = True


#: Unsent bytes a side's transport holds before the other side stops reading.
HIGH_WATER = CHUNK
#: The buffer the sides of a thread's relays read into: a read is passed on before the loop reads
#: anything else, so one buffer serves every connection and an idle one holds none (300 idle
#: sandboxes are 1,500 connections or more).
_buffers = threading.local()


def _read_buffer() -> memoryview:
    buffer: memoryview | None = getattr(_buffers, "chunk", None)
    if buffer is None:
        buffer = _buffers.chunk = memoryview(bytearray(CHUNK))
    return buffer


class _Side(asyncio.BufferedProtocol):
    """One socket of a relayed connection: what it reads goes to ``peer``'s socket (through the
    cutter, for the kernel's side), read and written by the loop without a task."""

    def __init__(self, relay: Relay, sock: socket.socket, cutter: MessageCutter | None) -> None:
        self.relay = relay
        self.sock = sock
        self.cutter = cutter
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        #: The buffer the transport is reading into now (``_read_buffer``'s, from ``get_buffer``).
        self._reading = memoryview(b"")

    @property
    def peer_transport(self) -> asyncio.Transport | None:
        return self.peer.transport if self.peer is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay._sides.add(self)
        peer_transport = self.peer_transport
        if peer_transport is None:
            transport.pause_reading()  # (until the other side is a transport too: it has nowhere to go)
        else:
            peer_transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        self._reading = _read_buffer()
        return self._reading

    def buffer_updated(self, nbytes: int) -> None:
        assert self.peer is not None
        data = self._reading[:nbytes]
        if self.cutter is None:
            self.peer.send(data)
            return
        try:
            pieces = self.cutter.feed(data)
        except ProtocolError as refused:
            self.relay._refused(refused)
            self.abort()
            return
        for piece in pieces:
            self.peer.send(piece)

    def send(self, data: memoryview | bytes) -> None:
        """Write ``data`` to this side's socket: at once if its transport holds nothing, and what
        is left as a copy. (A transport keeps what it cannot send as the very view it was given
        from Python 3.12 on, and the read buffer is read into again next.)"""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.get_write_buffer_size():
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # reset, broken pipe: the connection ends
                self.abort()
                return
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(bytes(data))

    def eof_received(self) -> bool:
        return False  # (the transport closes: connection_lost ends the other side too)

    def pause_writing(self) -> None:
        if (peer_transport := self.peer_transport) is not None:
            peer_transport.pause_reading()

    def resume_writing(self) -> None:
        if (peer_transport := self.peer_transport) is not None:
            peer_transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._sides.discard(self)
        if (peer_transport := self.peer_transport) is not None:
            peer_transport.close()  # (what it still holds for its socket is sent first)

    def abort(self) -> None:
        for transport in (self.transport, self.peer_transport):
            if transport is not None:
                transport.abort()
