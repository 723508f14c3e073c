"""Forwarding: a request for a sandbox another replica holds is served by that replica, through this one.

    class SandboxHandler(HolderRouting, APIHandler): ...      # prepare() forwards when the sandbox is elsewhere
    if await served_elsewhere(self, self.sandboxes, sandbox_id):   # (a WebSocket's get, before the upgrade)
        return

The holder is the replica whose lease names the sandbox (``SandboxManager.placement``); its
address is the one it recorded in the store. The request goes to it as it came — method, path,
query, headers (``Authorization`` and ``Origin`` too: the holder authenticates and checks it
again), body — plus ``X-Gateway-Hops`` and ``X-Forwarded-For``, and asking it to close the
connection after its answer. The answer comes back byte for byte until the holder closes: status
and headers (its ``Connection: close`` included, so the client opens a new connection for its
next request), a JSON body, an NDJSON or SSE stream event by event, a file download; an upload is
streamed through as it arrives. A WebSocket upgrade (``/stream``, the Jupyter channels) is the
same exchange, after which the two connections are joined, frames both ways, closing codes and
all. Each side is read only as fast as the other takes what it is sent, so nothing piles up here.

If the holder does not answer, it is dead or cut off. Its lease lapses within the lease timeout
(if it is dead: its heartbeat stopped); the request waits for that, then this replica takes the
sandbox over (re-attaching its kernel) and serves it. If the holder is still renewing its lease
but cannot be reached, the answer is ``503 sandbox_elsewhere`` with ``Retry-After``. A request
already forwarded ``MAX_HOPS`` times (its sandbox kept moving) gets the same answer.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from urllib.parse import urlsplit

from tornado import web
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from gateway.errors import SandboxHeldElsewhere
from gateway.sandboxes.leases import Holder
from gateway.sandboxes.manager import SandboxManager

log = logging.getLogger(__name__)

HOPS = "X-Gateway-Hops"
#: Times a request may be forwarded before its client is told to retry.
MAX_HOPS = 3
#: Seconds to wait for the holder to accept a connection.
CONNECT_TIMEOUT = 5.0
#: Headers that describe one connection, not the request (RFC 9110 7.6.1); ours replace them.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
CHUNK = 1 << 16


class HolderRouting:
    """Mixed into the handlers of requests for one sandbox (ahead of their Tornado base): ``prepare``
    hands a request for a sandbox another replica holds to that replica, and nothing else runs here."""

    sandboxes: SandboxManager

    async def routed_sandbox(self) -> str | None:
        """The id of the sandbox this request is for (default: the route's first group); None: none."""
        args: tuple[str, ...] = getattr(self, "path_args", ())
        return args[0] if args else None

    async def prepare(self) -> None:
        handler: web.RequestHandler = self  # type: ignore[assignment]
        await super().prepare()  # type: ignore[misc]  # (authentication first: strangers are refused here)
        if handler._finished or handler.request.method == "OPTIONS":
            return
        sandbox_id = await self.routed_sandbox()
        if sandbox_id:
            await served_elsewhere(handler, self.sandboxes, sandbox_id)


async def served_elsewhere(handler: web.RequestHandler, sandboxes: SandboxManager, sandbox_id: str) -> bool:
    """If another replica holds the sandbox, send it the request and the client its answer: True (the
    handler is done then, its connection handed over). False: serve it here (this replica holds it,
    nobody does, or it was just taken over from a holder that is gone)."""
    holder = await sandboxes.placement(sandbox_id)
    if holder is None:
        return False
    hops = _hops(handler)
    if hops >= MAX_HOPS:
        raise SandboxHeldElsewhere(sandbox_id, holder.replica_id, holder.address,
                                   f"sandbox {sandbox_id} is moving between replicas of this gateway; try again")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + sandboxes.leases.timeout + 2 * sandboxes.leases.period
    while True:
        upstream = await _connect(holder)
        if upstream is not None:
            await _relay(handler, upstream, hops + 1)
            return True
        log.warning("sandbox %s: its holder, replica %s at %s, does not answer", sandbox_id, holder.replica_id,
                    holder.address)
        if loop.time() >= deadline:
            raise SandboxHeldElsewhere(sandbox_id, holder.replica_id, holder.address,
                                       f"sandbox {sandbox_id} is held by another replica of this gateway, which "
                                       "does not answer; try again")
        # Dead, most likely: its lease lapses when its heartbeat does; then the sandbox is taken over.
        await asyncio.sleep(min(max(holder.expires_in, 0.0) + 0.05, max(0.0, deadline - loop.time())))
        holder = await sandboxes.placement(sandbox_id)
        if holder is None:
            return False


def _hops(handler: web.RequestHandler) -> int:
    try:
        return int(handler.request.headers.get(HOPS, "0"))
    except ValueError:
        return 0


async def _connect(holder: Holder) -> IOStream | None:
    address = urlsplit(holder.address)
    if address.hostname is None:
        return None
    try:
        # (Tornado's own timeout: asyncio.wait_for can swallow a cancellation)
        stream: IOStream = await TCPClient().connect(address.hostname, address.port or 80,
                                                   timeout=timedelta(seconds=CONNECT_TIMEOUT))
    except (OSError, StreamClosedError, TimeoutError):
        return None
    stream.set_nodelay(True)
    return stream


def _head(handler: web.RequestHandler, hops: int, *, upgrade: bool, streamed: bool) -> bytes:
    """The request line and headers to send the holder."""
    request = handler.request
    lines = [f"{request.method} {request.uri} HTTP/1.1"]
    for name, value in request.headers.get_all():
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in (HOPS.lower(), "x-forwarded-for"):
            continue
        if not streamed and lowered in ("content-length", "expect"):
            continue  # (Tornado read the body already, and answered any 100-continue)
        lines.append(f"{name}: {value}")
    forwarded_for = request.headers.get("X-Forwarded-For")
    lines.append(f"X-Forwarded-For: {forwarded_for + ', ' if forwarded_for else ''}{request.remote_ip}")
    lines.append(f"{HOPS}: {hops}")
    if upgrade:
        lines += [f"Connection: {request.headers.get('Connection', 'Upgrade')}",
                  f"Upgrade: {request.headers.get('Upgrade', 'websocket')}"]
    else:
        lines.append("Connection: close")
        if streamed:
            encoding = request.headers.get("Transfer-Encoding")
            if encoding:
                lines.append(f"Transfer-Encoding: {encoding}")
        else:
            lines.append(f"Content-Length: {len(request.body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _relay(handler: web.RequestHandler, upstream: IOStream, hops: int) -> None:
    """Send the request upstream and join the two connections until the holder is done (or either side goes)."""
    request = handler.request
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    streamed = bool(getattr(type(handler), "_stream_request_body", False))  # (set by @web.stream_request_body)
    head = _head(handler, hops, upgrade=upgrade, streamed=streamed)
    client = handler.detach()  # (the body of a streamed upload, if any, is still unread in it)
    client.set_nodelay(True)
    log.debug("forwarding %s %s to the replica holding its sandbox", request.method, request.path)
    try:
        await upstream.write(head)
        if not streamed and not upgrade and request.body:
            await upstream.write(request.body)
        down = asyncio.ensure_future(_pump(upstream, client))
        up = asyncio.ensure_future(_pump(client, upstream))
        # The holder closing ends it (its answer is whole). The client closing ends it too: it went
        # away, and the holder sees its connection close, as it would have.
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if down not in done and not client.closed():
            await down  # (the holder stopped reading, and is closing: what it sent still goes out)
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
    except StreamClosedError:
        pass
    finally:
        upstream.close()
        client.close()


async def _pump(source: IOStream, sink: IOStream) -> None:
    """Copy until ``source`` ends; each chunk is written out before the next is read (backpressure)."""
    try:
        while True:
            chunk = await source.read_bytes(CHUNK, partial=True)
            await sink.write(chunk)
    except StreamClosedError:
        return
