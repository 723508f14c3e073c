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
takes, ``loads`` reads every text as ``json.loads`` does, but for one nested too deep for its
recursive parser (a kernel can send one 100,000 levels deep), which is ``TooDeep``, a
``ValueError``, rather than ``RecursionError``. Two differences
from ``json.dumps``'s defaults remain, both valid JSON meaning the same: non-ASCII characters are
written as UTF-8 rather than ``\\u`` escapes, and a float NaN or infinity (which only the
standard library's lenient parser makes) is written as ``null`` rather than as the ``NaN`` that
is not JSON at all.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import orjson
import simdjson

#: Dict keys that are not strings (ints, floats, ...) are written as ``json`` writes them;
#: subclasses of builtins go to ``_default`` (so an ``Encoded`` list is written as it is known).
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
_fallback = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


#: A piece of a document written in pieces (``pieces``): bytes, or a view into an encoded list's JSON.
Buffer = bytes | memoryview
#: Values at least this large (bytes of JSON, characters of a string) are pieces of their own.
LARGE = 1 << 18


class TooDeep(ValueError):
    """JSON nested deeper than the gateway reads or keeps (``loads``, ``loads_bounded``; ``outputs.MAX_DEPTH``)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or f"arrays and objects nested more than {MAX_DEPTH} levels deep")


class _EncodedOnce:
    """The JSON of a value that must not change once encoded: made on first use, by one thread.

    The loop (a response, a final event) and the store's thread (the record) ask for it at the
    same moment when an execution ends: one encodes, the other waits for it, not doing it again
    (a 20 MiB flood's outputs: 17 ms each, taking turns at the GIL)."""

    _json: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoding = threading.Lock()

    def _encoded(self) -> bytes:
        raise NotImplementedError

    @property
    def json(self) -> bytes:
        if self._json is None:
            with self._encoding:
                if self._json is None:
                    self._json = self._encoded()
        return self._json


class EncodedObject(_EncodedOnce, dict[str, Any]):
    """A dict encoded once, however many documents hold it (a display output: in its live event
    and in its execution's outputs). Its JSON is made on first use; it must not change after that."""

    def _encoded(self) -> bytes:
        return dumps(dict(self))


class Encoded(_EncodedOnce, list[Any]):
    """A list that is encoded once, however many documents hold it (a finished execution's
    outputs: in its stored record, its response, its streams' final events).

    Its JSON is made on first use and then written as it is; it must not change after that.
    A document that also holds the text of its last output, a stream (an execution's
    ``stdout``, a flood's whole text), writes that text as a view of this JSON (``text_json``),
    not encoded again. The standard library's encoder (the fallback) sees a plain list.
    """

    #: Whether orjson wrote it (else the standard library did: see ``dumps``).
    _by_orjson = False

    def _encoded(self) -> bytes:
        try:
            encoded = orjson_dumps(list(self))
        except TypeError:
            return _fallback(list(self)).encode()
        self._by_orjson = True  # (before _json: a thread seeing _json must see this)
        return encoded

    def text_json(self, text: str) -> list[Buffer] | None:
        """``text`` as a JSON string in pieces (a view of ``json``), if it is the text of this
        list's last output, a stream output; else None.

        Where that output starts is the length of those before it (each encoded again, as
        orjson wrote it in the list; ``EncodedObject``s as they are)."""
        last = self[-1] if self else None
        if type(last) is not dict or list(last) != ["output_type", "name", "text"] or last["text"] != text:
            return None
        encoded = self.json
        if not self._by_orjson or not isinstance(last["name"], str):
            return None
        start = 1
        for item in self[:-1]:
            if isinstance(item, EncodedObject):
                start += len(item.json) + 1
                continue
            if type(item) is dict and sum(len(v) for v in item.values() if isinstance(v, str)) >= LARGE:
                return None  # (a large stream before it: not encoded again for this)
            start += len(orjson_dumps(item)) + 1
        prefix = b'{"output_type":"stream","name":' + orjson_dumps(last["name"]) + b',"text":"'
        if encoded[start:start + len(prefix)] != prefix or not encoded.endswith(b'"}]'):
            return None
        return [b'"', memoryview(encoded)[start + len(prefix):len(encoded) - 3], b'"']


def pieces(value: Any) -> list[Buffer]:
    """``value``'s JSON (as ``dumps`` writes it) in pieces, never joined: what is already encoded
    (``Encoded``, ``EncodedObject``) as it is, a large string encoded on its own (or, beside an
    ``Encoded`` list ending with it as a stream's text, as a view of that), the rest in runs between them.

    orjson writing one large document spends its time growing its buffer (for a 20 MiB flood's
    response, with ``stdout`` after its outputs, ten times what encoding the fields costs); a
    writer hands the pieces to the connection one after another."""
    parts = _large_parts(value, None)
    if parts is None:
        return [dumps(value)]
    merged: list[Buffer] = []
    run: list[Buffer] = []
    for part in parts:
        if len(part) < LARGE:
            run.append(part)
            continue
        if run:
            merged.append(b"".join(run))
            run = []
        merged.append(part)
    if run:
        merged.append(b"".join(run))
    return merged


def _large_parts(value: Any, beside: Encoded | None) -> list[Buffer] | None:
    """The pieces of ``value`` if it holds something large (``beside``: an encoded list in the
    same object, which may hold a large string's text); None to encode it whole."""
    if isinstance(value, (Encoded, EncodedObject)):
        return [value.json] if len(value.json) >= LARGE else None
    if isinstance(value, str):
        if len(value) < LARGE:
            return None
        return (beside.text_json(value) if beside is not None else None) or [dumps(value)]
    if type(value) is not dict or any(type(key) is not str for key in value):
        return None
    encoded = next((item for item in value.values() if isinstance(item, Encoded)), None)
    found = [_large_parts(item, encoded) for item in value.values()]
    if not any(found):
        return None
    parts: list[Buffer] = []
    for (key, item), large in zip(value.items(), found):
        parts.append(b"{" if not parts else b",")
        parts.append(dumps(key) + b":")
        parts.extend(large if large is not None else [dumps(item)])
    parts.append(b"}")
    return parts


def _default(value: Any) -> Any:
    if isinstance(value, (Encoded, EncodedObject)):
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


def reaches(value: Any, size: int) -> bool:
    """Whether ``value`` comes to ``size`` bytes or more, roughly (strings and bytes count their
    length, containers a few bytes per item; keys are not counted): a walk that stops as soon as
    it gets there, so a value holding a large output costs one look at it."""
    left = size
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            left -= len(item)
            if left <= 0:
                return True
        elif isinstance(item, dict):
            left -= 8 * len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            left -= 8 * len(item)
            stack.extend(item)
    return left <= 0


def orjson_dumps(value: Any) -> bytes:
    """``value`` as orjson writes it (``Encoded`` lists as they are); ``TypeError`` where orjson refuses it."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8."""
    try:
        return orjson_dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge integer, deep nesting, ...
        return _fallback(value).encode()


def is_object(data: Buffer) -> bool:
    """Whether ``data`` is one JSON object as orjson reads it (strict JSON, valid UTF-8, nothing
    before or after it but whitespace): a kernel message's part that can be relayed as it is.

    A large one is checked by simdjson, which validates without making Python objects (a 10 MB
    HTML table in 2 ms; orjson takes 8 building its strings). It skips a leading byte order mark,
    which is not JSON: refused here. What it refuses and orjson reads (an integer past 64 bits)
    is read by orjson, so what is relayed as it is stays what orjson accepts, or less.
    """
    if len(data) >= LARGE and data[:3] != _BOM:
        # One parser for most: its buffers stay (a new one's would be fresh pages, 3 ms of page
        # faults for 10 MB); a part past SHARED_PARSER_MAX gets its own, not kept.
        parser = _parser if len(data) <= SHARED_PARSER_MAX else simdjson.Parser()
        try:
            document = parser.parse(data)
        except (ValueError, RuntimeError):  # (malformed; a big integer, deep nesting: asked of orjson)
            pass
        else:
            whole = isinstance(document, simdjson.Object)
            del document  # (a Parser's document must go before it can be dropped)
            return whole
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


_BOM = b"\xef\xbb\xbf"
#: The largest part ``is_object`` checks with its kept parser (which holds about twice that).
SHARED_PARSER_MAX = 1 << 24
_parser = simdjson.Parser()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value of a JSON text; ``ValueError`` (``json.JSONDecodeError``) if it is not JSON,
    ``TooDeep`` if it nests too deep for the standard library (about 1000 levels; orjson reads 254)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = _ROUNDED
    if value is _ROUNDED or _may_be_rounded(value):
        try:
            return json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except RecursionError:
            raise TooDeep() from None  # (more than MAX_DEPTH, as loads_bounded says)
    return value


#: The deepest nesting of arrays and objects taken from a client (request bodies, socket messages):
#: orjson encodes up to 254 levels, and the standard library (its fallback) recurses once per level,
#: so a value a client gave may come back in a stored record, a response or a kernel message.
MAX_DEPTH = 128


def loads_bounded(data: bytes | bytearray | memoryview | str) -> Any:
    """``loads`` for what a client sends: ``TooDeep`` if it nests more than ``MAX_DEPTH`` levels."""
    value = loads(data)
    if deeper_than(value, MAX_DEPTH):
        raise TooDeep()
    return value


def deeper_than(value: Any, depth: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``depth`` levels deep (``[]`` is one).

    A walk over its containers, a level at a time (no recursion, whatever the depth)."""
    level = [value] if type(value) in (dict, list) else []
    for _ in range(depth):
        level = [item for container in level for item in (container.values() if type(container) is dict else container)
                 if type(item) in (dict, list)]
        if not level:
            return False
    return bool(level)


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
