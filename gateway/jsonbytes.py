"""JSON on the gateway's hot paths (responses, stream events, stored records, kernel messages): orjson,
with the standard library wherever orjson refuses a value.

    body = dumps({"status": "completed", "outputs": outputs})    # bytes, compact, UTF-8
    value = loads(frame)                                          # from bytes or str

orjson encodes a 2.8 MB base64 PNG in about 0.3 ms where ``json.dumps`` takes 11 ms, and parses
small objects (kernel message headers) 5-10 times faster. It is stricter than ``json``: it refuses
strings holding lone surrogates, integers past 64 bits and nesting past 254 levels, both ways,
and ``NaN`` and ``Infinity`` when parsing; and it reads an integer past 64 bits as a float. A
kernel can send all of these, so whatever orjson refuses or may have rounded is done by ``json``
instead, and comes out as ``json`` makes it: ``dumps`` never fails on a value ``json.dumps``
takes, ``loads`` reads every text as ``json.loads`` does. Two differences
from ``json.dumps``'s defaults remain, both valid JSON meaning the same: non-ASCII characters are
written as UTF-8 rather than ``\\u`` escapes, and a float NaN or infinity (which only the
standard library's lenient parser makes) is written as ``null`` rather than as the ``NaN`` that
is not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: Dict keys that are not strings (ints, floats, ...) are written as ``json`` writes them;
#: subclasses of builtins go to ``_default`` (so an ``Encoded`` list is written as it is known).
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
_fallback = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


class Encoded(list[Any]):
    """A list that is encoded once, however many documents hold it (a finished execution's
    outputs: in its stored record, its response, its streams' final events).

    Its JSON is made on first use and then written as it is; it must not change after that.
    The standard library's encoder (the fallback) sees a plain list.
    """

    _json: bytes | None = None

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps(list(self))
        return self._json


def _default(value: Any) -> Any:
    if isinstance(value, Encoded):
        return orjson.Fragment(value.json)
    # Other subclasses are written as orjson writes their base.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def orjson_dumps(value: Any) -> bytes:
    """``value`` as orjson writes it (``Encoded`` lists as they are); ``TypeError`` where orjson refuses it."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def orjson_line(value: Any) -> bytes:
    """The same with a newline at the end (written by orjson, not by copying its output again)."""
    return orjson.dumps(value, default=_default, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8."""
    try:
        return orjson_dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge integer, deep nesting, ...
        return _fallback(value).encode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value of a JSON text; ``ValueError`` (``json.JSONDecodeError``) if it is not JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = _ROUNDED
    if value is _ROUNDED or _may_be_rounded(value):
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    return value


_ROUNDED = object()
#: Floats at least this large may be integers orjson could not hold (past 64 bits) and rounded.
_ROUNDING = float(1 << 63)


def _may_be_rounded(value: Any) -> bool:
    """Whether ``value`` holds a float as large as an integer past 64 bits (costs a walk over its
    containers and numbers; long strings cost nothing)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float and not -_ROUNDING < item < _ROUNDING:
            return True
    return False
