"""JSON for stored records, encoded so that the thread doing it lets the event loop run.

    text = encode(record)     # in the store's thread
    record = decode(text)

Moving the encoding to the store's thread is not enough by itself: an encoder holds the GIL for
the whole call, and the loop's thread cannot run until it returns. orjson (``gateway.jsonbytes``)
encodes a 10 MiB record holding a large PNG in about a millisecond, so it is done in one call.
A record orjson refuses (a lone surrogate in a string, say) is encoded by the stdlib, which takes
25-50 ms for the same record: there a long string is given to the encoder in slices, releasing
the GIL between them, and the containers that hold one are encoded piece by piece, so the loop
waits about a millisecond at a time, not for the whole record.
"""

from __future__ import annotations

import json
import time
from typing import Any


from gateway import jsonbytes
from gateway.store.base import Record

#: Strings longer than this many characters are encoded in slices of this size.
SLICE = 1 << 16

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode(value: Any) -> str:
    """``value`` as compact JSON (text: SQLite's ``json_extract`` reads TEXT, not BLOBs)."""
    try:
        return jsonbytes.orjson_dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: what orjson refuses, the stdlib writes
        return sliced(value)


def sliced(value: Any) -> str:
    """``value`` as the stdlib writes compact JSON; long strings in it are encoded a slice at a time."""
    if not _holds_long_string(value):
        return _dumps(value)
    parts: list[str] = []
    _encode_into(value, parts)
    return "".join(parts)


def decode(text: str | bytes) -> Record:
    record: Record = jsonbytes.loads(text)
    return record


def _holds_long_string(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) > SLICE
    if isinstance(value, dict):
        return any(_holds_long_string(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_long_string(item) for item in value)
    return False


def _encode_into(value: Any, parts: list[str]) -> None:
    if not _holds_long_string(value):
        parts.append(_dumps(value))
    elif isinstance(value, str):
        # Every character is escaped on its own, so slices encode to pieces of the whole.
        parts.append('"')
        for start in range(0, len(value), SLICE):
            parts.append(_dumps(value[start:start + SLICE])[1:-1])
            time.sleep(0)  # releases the GIL: a thread waiting for it (the loop's) runs now, not in 5 ms
        parts.append('"')
    elif isinstance(value, dict):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            parts.append(("," if index else "") + _dumps(_key(key)) + ":")
            _encode_into(item, parts)
        parts.append("}")
    else:
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode_into(item, parts)
        parts.append("]")


def _key(key: Any) -> str:
    """A dict key as ``json`` writes it (records have string keys; this keeps the others valid)."""
    return key if isinstance(key, str) else _dumps(key).strip('"')
