"""Streaming an execution over HTTP: NDJSON or Server-Sent Events, chosen by the Accept header.

    encoder = ENCODERS.get(negotiate(request.headers.get("Accept", "")))   # None: one JSON document
    handler.write(encoder.encode(event))

Every event is one JSON object with a ``type``: ``output`` (an nbformat output), ``clear_output``,
``update_display``, and last ``execution`` (the final Execution). While a long execution is
silent, a keepalive goes out so proxies don't cut the connection.

Large bodies leave without being copied again (``write_large``, ``write_event``): Tornado joins a
response's headers to its body, and frames each streamed chunk by concatenation, two copies of
every byte of a 20 MiB output (a third of the gateway's time relaying one). Here a body is handed
to the connection as it is: only the headers and the framing are written apart from it.
WebSocket handlers get the same by deriving from ``UncopiedFrames``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import struct
import types
from asyncio import Future
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tornado import web, websocket
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from gateway.errors import GatewayError, NotAcceptable
from gateway.jsonbytes import LARGE, Buffer, pieces

log = logging.getLogger(__name__)

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


@dataclasses.dataclass(frozen=True)
class EventEncoder:
    media_type: str
    keepalive: bytes
    #: An event in pieces, never joined (``jsonbytes.pieces``): what ``write_event`` takes.
    pieces: Callable[[dict[str, Any]], list[Buffer]]

    def encode(self, event: dict[str, Any]) -> bytes:
        """The same event as one buffer (a small one, as the error that ends a stream)."""
        return b"".join(self.pieces(event))


def _ndjson_pieces(event: dict[str, Any]) -> list[Buffer]:
    return [*pieces(event), b"\n"]


def _sse_pieces(event: dict[str, Any]) -> list[Buffer]:
    return [b"event: " + str(event["type"]).encode() + b"\ndata: ", *pieces(event), b"\n\n"]


ENCODERS = {
    NDJSON: EventEncoder(NDJSON, b'{"type": "keepalive"}\n', _ndjson_pieces),
    SSE: EventEncoder(SSE, b": keepalive\n\n", _sse_pieces),
}


def negotiate(accept: str, offered: Sequence[str] = (JSON, NDJSON, SSE)) -> str:
    """The media type of ``offered`` that the ``Accept`` header prefers, as RFC 9110 (12.5.1) says.

    Each offer's weight is the ``q`` of the most specific range matching it (``application/json``,
    then ``application/*``, then ``*/*``; parameters other than ``q`` are not compared); ``q=0``
    means not acceptable. Of the offers weighed highest, the one whose range the header lists
    first, then the first offered. No header (or none that can be read) is the first offer;
    ``NotAcceptable`` if the header accepts none.
    """
    ranges = _media_ranges(accept)
    if not ranges:
        return offered[0]
    best: tuple[float, int, int] | None = None
    chosen = offered[0]
    for index, offer in enumerate(offered):
        kind = offer.split("/")[0]
        matching = [(specificity, -position, quality) for position, (media_range, quality) in enumerate(ranges)
                    for specificity, pattern in ((2, offer), (1, f"{kind}/*"), (0, "*/*")) if media_range == pattern]
        if not matching:
            continue
        _, position, quality = max(matching)  # (the most specific; of equals, the first listed)
        rank = (quality, position, -index)
        if quality > 0 and (best is None or rank > best):
            best, chosen = rank, offer
    if best is None:
        raise NotAcceptable(f"the Accept header accepts none of what this endpoint answers with: {', '.join(offered)}")
    return chosen


#: A qvalue as RFC 9110 writes it (leniently: ``.5`` too, as some clients send it).
_QVALUE = re.compile(r"(?:0?\.\d{1,3}|[01](?:\.\d{0,3})?)")


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    """The header's media ranges (lowercased, ``*`` read as ``*/*``) with their ``q``; a range that
    cannot be read (no ``type/subtype``, a ``q`` that is no qvalue) is left out."""
    ranges = []
    for part in accept.split(","):
        media_range, *parameters = [piece.strip() for piece in part.split(";")]
        media_range = "*/*" if media_range == "*" else media_range.lower()
        if media_range.count("/") != 1 or not all(media_range.split("/")):
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _QVALUE.fullmatch(value) and float(value) <= 1 else -1.0
        if quality >= 0:
            ranges.append((media_range, quality))
    return ranges


#: The WebSocket close code when a held message will never be whole (RFC 6455: the server failed).
HELD_LOST_CODE = 1011

#: Slices of a large chunked body: each one's framing copies this much at most.
SLICE = 1 << 18


def write_large(handler: web.RequestHandler, body: bytes | list[Buffer]) -> None:
    """Finish ``handler`` with ``body`` (the status and headers set), never copying a large one.

    Its length (of all its pieces, if it is a list: ``jsonbytes.pieces``) is sent as
    ``Content-Length``, the headers go out first, then each piece as it is. (No ``Etag`` on such
    a body: Tornado would hash all of it for one.)
    """
    parts: list[Buffer] = [body] if isinstance(body, bytes) else body
    size = sum(len(part) for part in parts)
    if size < LARGE:
        handler.finish(b"".join(parts))
        return
    _write_unframed(handler, parts, size)
    handler.finish()


async def write_large_held(handler: web.RequestHandler, parts: list[Buffer],
                           durable: Callable[[], Awaitable[Any]]) -> None:
    """``write_large``, finished once ``durable()`` returns (what the body tells is stored): a large
    body leaves meanwhile, all but its end (``hold_end``), so the client has it whole only then."""
    size = sum(len(part) for part in parts)
    if size < LARGE:
        await durable()
        handler.finish(b"".join(parts))
        return
    head, end = hold_end(parts)
    _write_unframed(handler, head, size)
    try:
        await durable()
    except GatewayError as never:  # it never will be (the gateway stopped first): the body stays short
        log.warning("%s %s: cut short: %s", handler.request.method, handler.request.path, never)
        cut_short(handler)
        return
    _write_unframed(handler, [end])
    handler.finish()


def cut_short(handler: web.RequestHandler) -> None:
    """End a response whose body has begun by closing its connection: the client sees it unfinished."""
    connection = handler.request.connection
    assert isinstance(connection, HTTP1Connection)
    connection.close()
    handler.finish()  # (on a closed connection: writes nothing, checks no length)


def _write_unframed(handler: web.RequestHandler, parts: list[Buffer], size: int | None = None) -> None:
    """Hand ``parts`` to the connection as they are; ``size``: the whole body's, sent first as
    ``Content-Length`` with the headers."""
    if size is not None:
        handler.set_header("Content-Length", size)
        handler.flush()
    connection = handler.request.connection
    assert connection is not None
    for part in parts:
        connection.write(part)  # type: ignore[arg-type]  # with a Content-Length, Tornado frames nothing: the bytes themselves


def hold_end(parts: list[Buffer]) -> tuple[list[Buffer], bytes]:
    """A JSON document (or event) in pieces, split before its last ``}``: what can leave before it is
    final, and its end, without which no client has the document (nor a parser its last value)."""
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        at = part.rfind(b"}") if isinstance(part, bytes) else -1  # (a view is a large string's or list's)
        if at >= 0:
            return [*parts[:index], part[:at]], b"".join([part[at:], *parts[index + 1:]])
    raise ValueError("not a JSON object: no closing brace")


async def write_event(handler: web.RequestHandler, data: bytes | list[Buffer]) -> None:
    """Write one event of a stream and flush it, returning once it is flushed whole (awaiting
    this is the backpressure, as awaiting ``flush`` is).

    A large event of a chunked response is framed here, its size line and end written around
    it, the payload itself handed to the connection's stream as it is (Tornado's framing joins
    them: two copies). Without chunking (an HTTP/1.0 client) it is written in slices. ``data``
    may be pieces (``jsonbytes.pieces``): written one after another, never joined.
    """
    parts = [data] if isinstance(data, bytes) else data
    size = sum(len(part) for part in parts)
    if size < LARGE:
        handler.write(b"".join(parts))
        await handler.flush()
        return
    await handler.flush()  # the headers, if they are not out yet
    connection = handler.request.connection
    assert connection is not None
    if isinstance(connection, HTTP1Connection) and getattr(connection, "_chunking_output", False):
        stream = connection.stream
        stream.write(b"%x\r\n" % size)
        for part in parts:
            stream.write(part)
        await stream.write(b"\r\n")  # (resolves once everything before it is written too)
        return
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), SLICE):
            await connection.write(view[start:start + SLICE])  # type: ignore[arg-type]  # (any buffer is framed)


class UncopiedFrames(websocket.WebSocketHandler):
    """A WebSocket handler whose large frames leave without being copied: Tornado joins each
    frame's header to its payload (for a 20 MiB flood, a quarter of the gateway's time). Here
    the header is written first, then the payload as it is (Tornado's stream keeps a reference)."""

    def get_websocket_protocol(self) -> websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if isinstance(protocol, websocket.WebSocketProtocol13) and not protocol.mask_outgoing:
            protocol._write_frame = types.MethodType(_write_uncopied, protocol)  # type: ignore[method-assign]
        return protocol

    def uncopied(self, size: int) -> bool:
        """Whether ``write_pieces`` writes a message of ``size`` bytes in its pieces (else joined,
        by ``write_message``)."""
        protocol = self.ws_connection
        return (size >= LARGE and isinstance(protocol, websocket.WebSocketProtocol13) and not protocol.mask_outgoing
                and protocol._compressor is None and protocol.stream is not None)

    def write_pieces(self, parts: list[Buffer]) -> Future[None]:
        """Send one text message given in pieces (``jsonbytes.pieces``): a large uncompressed one
        as one frame, its header then each piece, never joined (else as ``write_message`` does)."""
        size = sum(len(part) for part in parts)
        if not self.uncopied(size):
            return self.write_message(b"".join(parts))
        return self._write_uncopied_message(parts, size)

    async def write_held(self, parts: list[Buffer], release: Callable[[], Awaitable[Any]]) -> None:
        """``write_pieces``, the message whole only once ``release()`` returns (what it tells is durable):
        a large one leaves meanwhile, all but its end (``hold_end``), as a first fragment, the end
        then as its last. The caller sends no other message in between (control frames may come).

        If ``release()`` raises a ``GatewayError`` (it never will be durable), a message not begun
        is not sent (the error is raised); one begun is never ended: the socket is closed (1011).
        """
        size = sum(len(part) for part in parts)
        if not self.uncopied(size):
            await release()
            await self.write_pieces(parts)
            return
        head, end = hold_end(parts)
        protocol = self._protocol_for(size)
        try:
            _write_frame_pieces(protocol, 0x1, head, size - len(end))  # a text frame, not the last of its message
            try:
                await release()
            except GatewayError as never:  # it never will be whole: no data frame may come after the fragment
                self.close(HELD_LOST_CODE, f"{never.code}: the execution's record was not stored")
                raise websocket.WebSocketClosedError() from None
            if protocol.is_closing():  # (closed meanwhile, a ping unanswered: no data frame after a Close)
                raise websocket.WebSocketClosedError()
            await _write_frame(protocol, True, 0x0, end)  # the continuation that ends it
        except StreamClosedError:
            raise websocket.WebSocketClosedError() from None

    def _protocol_for(self, size: int) -> websocket.WebSocketProtocol13:
        """The connection's protocol, a message of ``size`` bytes counted as sent (as Tornado counts
        its own); ``WebSocketClosedError`` if it is closing."""
        protocol = self.ws_connection
        assert isinstance(protocol, websocket.WebSocketProtocol13)
        if protocol.is_closing():
            raise websocket.WebSocketClosedError()
        protocol._message_bytes_out += size
        return protocol

    def _write_uncopied_message(self, parts: list[Buffer], size: int) -> Future[None]:
        """``write_pieces`` once ``uncopied(size)`` said yes: one text frame, its pieces as they are."""
        protocol = self._protocol_for(size)
        try:
            written = _write_frame_pieces(protocol, protocol.FIN | 0x1, parts, size)  # a text frame
        except StreamClosedError:
            raise websocket.WebSocketClosedError() from None

        async def closed_as_websocket() -> None:
            # A client gone while the frame is on its way fails the stream's future: raised as
            # write_message raises it (WebSocketClosedError), which the senders expect.
            try:
                await written
            except StreamClosedError:
                raise websocket.WebSocketClosedError() from None

        return asyncio.ensure_future(closed_as_websocket())


def _write_uncopied(protocol: websocket.WebSocketProtocol13, fin: bool, opcode: int, data: bytes,
                    flags: int = 0) -> Future[None]:
    """``WebSocketProtocol13._write_frame`` for an unmasked frame, the payload not joined to its header."""
    if len(data) < LARGE:
        return _write_frame(protocol, fin, opcode, data, flags)
    return _write_frame_pieces(protocol, (protocol.FIN if fin else 0) | opcode | flags, [data], len(data))


def _write_frame_pieces(protocol: websocket.WebSocketProtocol13, first_byte: int, parts: list[Buffer],
                        size: int) -> Future[None]:
    """One unmasked frame of ``size`` bytes (at least ``LARGE``: a 64-bit length) made of ``parts``:
    its header, then each part as it is (counted as sent, as Tornado counts its frames)."""
    header = struct.pack("!BBQ", first_byte, 127, size)
    protocol._wire_bytes_out += len(header) + size
    stream = protocol.stream
    assert stream is not None
    stream.write(header)
    for part in parts[:-1]:
        stream.write(part)
    return stream.write(parts[-1])


_write_frame = websocket.WebSocketProtocol13._write_frame
