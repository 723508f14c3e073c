"""Streaming an execution over HTTP: NDJSON or Server-Sent Events, chosen by the Accept header.

    encoder = negotiate(request.headers.get("Accept", ""))   # None: the client wants one JSON document
    handler.write(encoder.encode(event))

Every event is one JSON object with a ``type``: ``output`` (an nbformat output), ``clear_output``,
``update_display``, and last ``execution`` (the final Execution). While a long execution is
silent, a keepalive goes out so proxies don't cut the connection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gateway.jsonbytes import dumps

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


@dataclasses.dataclass(frozen=True)
class EventEncoder:
    media_type: str
    encode: Callable[[dict[str, Any]], bytes]
    keepalive: bytes


def _ndjson(event: dict[str, Any]) -> bytes:
    return dumps(event) + b"\n"


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


ENCODERS = {
    NDJSON: EventEncoder(NDJSON, _ndjson, b'{"type": "keepalive"}\n'),
    SSE: EventEncoder(SSE, _sse, b": keepalive\n\n"),
}


def negotiate(accept: str) -> EventEncoder | None:
    """The stream format the Accept header asks for first, or None for a plain JSON response."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type in ENCODERS:
            return ENCODERS[media_type]
        if media_type in ("application/json", "*/*"):
            return None
    return None
