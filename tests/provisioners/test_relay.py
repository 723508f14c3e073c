"""The relay's ZMTP splitter on byte streams split at every boundary, and the relay between real sockets.

The attack through a real sandbox is in tests/e2e/test_oversized_messages.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import warnings
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from gateway.provisioners.relay import CUT, FRAME_COST, MAX_COMMAND_BYTES, MessageCutter, ProtocolError, Relay
from tests.stalled import memory_of

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
assert len(GREETING) == 64


def frame(body: bytes, *, more: bool = False, command: bool = False, long: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if long or len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def message(*bodies: bytes, long: bool = False) -> bytes:
    return b"".join(frame(body, more=i < len(bodies) - 1, long=long) for i, body in enumerate(bodies))


READY = frame(b"\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB", command=True)
CUT_FRAME = frame(CUT)


def relayed(stream: bytes, limit: int, splits: list[int]) -> tuple[bytes, MessageCutter]:
    """What the cutter forwards of ``stream`` fed in chunks ending at ``splits``."""
    cutter = MessageCutter(limit)
    out = bytearray()
    start = 0
    for end in [*splits, len(stream)]:
        for piece in cutter.feed(memoryview(stream)[start:end]):
            out += piece
        start = end
    return bytes(out), cutter


def every_split(stream: bytes) -> list[list[int]]:
    """The stream whole, cut once at each byte boundary, and cut at every byte."""
    return [[], *([at] for at in range(1, len(stream))), list(range(1, len(stream)))]


def test_messages_within_the_bound_pass_unchanged_however_the_stream_is_split() -> None:
    stream = (GREETING + READY + message(b"<IDS|MSG>", b"sig", b"{}", b"x" * 300, long=False)
              + frame(b"\x04PING\x00\x00" + b"ctx", command=True) + message(b"", b"a", long=True) + message(b"z"))
    for splits in every_split(stream):
        out, cutter = relayed(stream, 10_000, splits)
        assert out == stream, splits
        assert cutter.cuts == 0


def test_a_message_past_the_bound_ends_with_cut_and_its_rest_is_dropped() -> None:
    limit = 3 * (100 + FRAME_COST)
    big = message(*[bytes([i]) * 100 for i in range(6)])  # 6 frames of 100: the fourth passes the bound
    after = message(b"next", b"one")
    # A command between two frames of a message (libzmq may send PING there) passes as it is.
    stream = GREETING + READY + big[:3 * 102] + frame(b"\x04PING\x00\x00", command=True) + big[3 * 102:] + after
    expected = (GREETING + READY + b"".join(frame(bytes([i]) * 100, more=True) for i in range(3))
                + frame(b"\x04PING\x00\x00", command=True) + CUT_FRAME + after)
    for splits in every_split(stream):
        out, cutter = relayed(stream, limit, splits)
        assert out == expected, splits
        assert cutter.cuts == 1


def test_one_frame_past_the_bound_is_replaced_by_cut_whole_long_or_short() -> None:
    for long in (False, True):
        stream = GREETING + message(b"y" * 200, long=long) + message(b"ok")
        for splits in every_split(stream):
            out, cutter = relayed(stream, 100, splits)
            assert out == GREETING + CUT_FRAME + message(b"ok"), (long, splits)
            assert cutter.cuts == 1


def test_many_empty_frames_are_bounded_too() -> None:
    stream = GREETING + message(*[b""] * 100)
    out, cutter = relayed(stream, 10 * FRAME_COST, [])
    assert out == GREETING + message(*[b""] * 10)[:-2] + frame(b"", more=True) + CUT_FRAME
    assert cutter.cuts == 1


def test_cuts_bound_each_message_separately() -> None:
    stream = GREETING + b"".join(message(b"a" * 50, b"b" * 50) for _ in range(5))
    out, cutter = relayed(stream, 2 * (50 + FRAME_COST), [])
    assert out == stream and cutter.cuts == 0
    out, cutter = relayed(stream, 50 + FRAME_COST, [7, 100, 101, 250])
    assert out == GREETING + (frame(b"a" * 50, more=True) + CUT_FRAME) * 5
    assert cutter.cuts == 5


@pytest.mark.parametrize("greeting, why", [
    (b"\x00" + GREETING[1:], "not a ZMTP 3 greeting"),          # ZMTP 1.0 has no signature
    (GREETING[:9] + b"\x01" + GREETING[10:], "not a ZMTP 3 greeting"),
    (GREETING[:10] + b"\x02" + GREETING[11:], "version 2"),      # libzmq would fall back to 2.0 framing
    (GREETING[:12] + b"CURVE".ljust(20, b"\0") + GREETING[32:], "mechanism"),
])
def test_a_greeting_other_than_zmtp_3_null_is_refused_before_libzmq_sees_it(greeting: bytes, why: str) -> None:
    for at in range(1, 64):
        cutter = MessageCutter(1000)
        forwarded = bytearray()
        with pytest.raises(ProtocolError, match=why):
            for part in (greeting[:at], greeting[at:]):
                for piece in cutter.feed(memoryview(part)):
                    forwarded += piece
        assert forwarded == GREETING[:len(forwarded)] and greeting[len(forwarded):] != GREETING[len(forwarded):]


def test_a_command_past_its_bound_is_refused() -> None:
    cutter = MessageCutter(1 << 30)
    cutter.feed(memoryview(GREETING))
    with pytest.raises(ProtocolError, match="command"):
        cutter.feed(memoryview(bytes([4 | 2]) + (MAX_COMMAND_BYTES + 1).to_bytes(8, "big")))


async def test_the_relay_carries_zeromq_both_ways_and_cuts_what_passes_the_bound(tmp_path: Path) -> None:
    """A real PUB (the kernel) and ROUTER, SUB and DEALER sockets (the gateway) through relays; a
    reconnect after the relay closed its connections reaches the kernel again."""
    context = zmq.asyncio.Context()
    kernel_pub, kernel_router = context.socket(zmq.PUB), context.socket(zmq.ROUTER)
    kernel_pub.bind(f"ipc://{tmp_path}/k-1")
    kernel_router.bind(f"ipc://{tmp_path}/k-2")
    relays, fds = [], []
    for port in (1, 2):
        fd = os.open(tmp_path / f"k-{port}", os.O_PATH)
        fds.append(fd)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / f"g-{port}"))
        listener.listen()
        relay = Relay(listener, f"/proc/self/fd/{fd}", max_message_bytes=1 << 20, name=f"g-{port}")
        relay.start()
        relays.append(relay)
    sub, dealer = context.socket(zmq.SUB), context.socket(zmq.DEALER)
    sub.subscribe(b"")
    sub.connect(f"ipc://{tmp_path}/g-1")
    dealer.connect(f"ipc://{tmp_path}/g-2")
    try:
        await dealer.send_multipart([b"hello", b"kernel"])
        identity, *request = await asyncio.wait_for(kernel_router.recv_multipart(), 10)
        assert request == [b"hello", b"kernel"]
        await kernel_router.send_multipart([identity, b"big", b"x" * (2 << 20)])
        await kernel_router.send_multipart([identity, b"small", b"y" * 1000])
        assert await asyncio.wait_for(dealer.recv_multipart(), 10) == [b"big", CUT]
        assert await asyncio.wait_for(dealer.recv_multipart(), 10) == [b"small", b"y" * 1000]
        buffer = memoryview(bytearray(512 << 10))  # 4 frames of it: 2 MiB in one message, from 512 KiB
        cut = whole = 0
        while not (cut and whole):  # (the first ones go out before the subscription reached the kernel)
            await kernel_pub.send_multipart([b"topic", *[buffer] * 4], copy=False)
            await kernel_pub.send_multipart([b"topic", b"z" * (512 << 10)])
            while await sub.poll(100):
                received = await sub.recv_multipart()
                if received == [b"topic", buffer.tobytes(), CUT]:
                    cut += 1
                else:
                    assert received == [b"topic", b"z" * (512 << 10)]
                    whole += 1
        assert relays[0].cuts >= cut and relays[1].cuts == 1

        relays[1].close()  # its connections end; a new relay on the same path is reached by ZeroMQ's reconnect
        await asyncio.sleep(0.1)
        (tmp_path / "g-2").unlink()
        fd = os.open(tmp_path / "k-2", os.O_PATH)
        fds.append(fd)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "g-2"))
        listener.listen()
        relays[1] = Relay(listener, f"/proc/self/fd/{fd}", max_message_bytes=1 << 20, name="g-2")
        relays[1].start()
        await dealer.send_multipart([b"again"])
        identity, *request = await asyncio.wait_for(kernel_router.recv_multipart(), 10)
        assert request == [b"again"]
    finally:
        for relay in relays:
            relay.close()
        context.destroy(linger=0)
        await asyncio.sleep(0)  # (the relays' tasks close their sockets as they unwind)
        for fd in fds:
            os.close(fd)


async def test_a_reader_that_stops_stops_the_relay_and_gets_everything_once_it_reads(tmp_path: Path) -> None:
    """The relay holds at most its high-water mark for a reader that does not read (the kernel's
    sends back up into the kernel), and loses or garbles nothing once it reads (its transports
    hold what they could not send, on Python 3.12 on as views of the buffer it read into)."""
    from gateway.provisioners.relay import CHUNK, HIGH_WATER

    kernel_listener = socket.socket(socket.AF_UNIX)
    kernel_listener.bind(str(tmp_path / "k"))
    kernel_listener.listen()
    kernel_listener.setblocking(False)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "g"))
    listener.listen()
    relay = Relay(listener, str(tmp_path / "k"), max_message_bytes=64 << 20, name="g")
    relay.start()
    loop = asyncio.get_running_loop()
    gateway = socket.socket(socket.AF_UNIX)
    gateway.setblocking(False)
    await loop.sock_connect(gateway, str(tmp_path / "g"))
    kernel, _ = await asyncio.wait_for(loop.sock_accept(kernel_listener), 10)
    kernel.setblocking(False)
    # 16 MiB the gateway does not read yet; random, so that bytes the relay garbled would show
    stream = GREETING + message(b"topic", os.urandom(16 << 20))
    sent = 0
    try:
        while sent < len(stream):  # the kernel sends until its socket is full: the relay stopped reading
            try:
                sent += kernel.send(memoryview(stream)[sent:sent + (1 << 20)])
            except BlockingIOError:
                await asyncio.sleep(0.2)
                try:
                    sent += kernel.send(memoryview(stream)[sent:sent + (1 << 20)])
                except BlockingIOError:
                    break
        assert sent < len(stream)
        held = sum(side.transport.get_write_buffer_size() for side in relay._sides if side.transport is not None)
        assert held <= HIGH_WATER + CHUNK, held
        received = bytearray()
        sending = loop.create_task(loop.sock_sendall(kernel, memoryview(stream)[sent:]))
        while len(received) < len(stream):
            received += await asyncio.wait_for(loop.sock_recv(gateway, 1 << 20), 10)
        await sending
        assert bytes(received) == stream
    finally:
        relay.close()
        gateway.close()
        kernel.close()
        kernel_listener.close()
        await asyncio.sleep(0)


async def test_idle_relayed_connections_hold_no_buffers(tmp_path: Path) -> None:
    """300 idle sandboxes are 1,500 relayed connections or more: each holds its sockets and
    transports, no read buffer (the relay before held two of 256 KiB each: 150 MiB here)."""
    kernel_listener = socket.socket(socket.AF_UNIX)
    kernel_listener.bind(str(tmp_path / "k"))
    kernel_listener.listen(512)
    kernel_listener.setblocking(False)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "g"))
    listener.listen(512)
    relay = Relay(listener, str(tmp_path / "k"), max_message_bytes=64 << 20, name="g")
    relay.start()
    loop = asyncio.get_running_loop()
    clients: list[socket.socket] = []
    kernels: list[socket.socket] = []
    before = memory_of(os.getpid())["rss"]
    try:
        for _ in range(300):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            clients.append(client)
            await loop.sock_connect(client, str(tmp_path / "g"))
            kernel, _ = await asyncio.wait_for(loop.sock_accept(kernel_listener), 10)
            kernels.append(kernel)
            await loop.sock_sendall(kernel, GREETING)  # (each connection reads once, as a kernel's do)
            assert await asyncio.wait_for(loop.sock_recv(client, 128), 10) == GREETING
        grown = memory_of(os.getpid())["rss"] - before
        assert grown < 20 << 20, f"{grown >> 20} MiB for 300 idle connections"
        assert len(relay._sides) == 600
    finally:
        relay.close()
        for sock in (*clients, *kernels, kernel_listener):
            sock.close()
        await asyncio.sleep(0)


@pytest.mark.parametrize("steps", range(4))
async def test_a_relay_closed_as_it_accepts_closes_that_connection_too(tmp_path: Path, steps: int) -> None:
    """Closed between accepting a connection and connecting it to the kernel (a sandbox stopping as
    ZeroMQ reconnects), the relay still closes the accepted socket: its task, cancelled before its
    first step, never runs. Left to the garbage collector, it was an unclosed-socket warning."""
    kernel_listener = socket.socket(socket.AF_UNIX)
    kernel_listener.bind(str(tmp_path / "k"))
    kernel_listener.listen(8)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "g"))
    listener.listen(8)
    relay = Relay(listener, str(tmp_path / "k"), max_message_bytes=1 << 20, name="g")
    relay.start()
    client = socket.socket(socket.AF_UNIX)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            client.connect(str(tmp_path / "g"))  # (the backlog takes it at once)
            for _ in range(steps):  # one of these counts closes the relay inside the window
                await asyncio.sleep(0)
            relay.close()
            for _ in range(3):
                await asyncio.sleep(0)
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
        client.settimeout(10)
        try:
            assert client.recv(1) == b""  # the relay's side of it is closed
        except ConnectionResetError:
            pass  # (closed by the listener's close, still in its backlog: just as closed)
    finally:
        client.close()
        kernel_listener.close()
