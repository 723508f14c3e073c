"""jsonbytes: orjson where it can, the stdlib where orjson refuses; never less than ``json`` takes."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from gateway import jsonbytes
from gateway.api.streams import ENCODERS, NDJSON, SSE, hold_end


@pytest.mark.parametrize("value", [
    {"status": "completed", "outputs": [{"data": {"image/png": "iVBOR" * 100000}}], "n": 1.5, "none": None},
    {1: "int key", 2.5: "float key", True: "bool key", None: "null key"},
    ["é\u2028\U0001F600\"\\\x00\n", ("a", "tuple")],
    {"lone surrogate": "a\ud800b"},
    {"huge": 1 << 70, "negative": -(1 << 80)},
    {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
])
def test_dumps_means_what_the_stdlib_writes(value: Any) -> None:
    encoded = jsonbytes.dumps(value)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == json.loads(json.dumps(value))


def test_deeper_than_orjson_nests() -> None:
    value: Any = 1
    for _ in range(400):
        value = [value]
    assert json.loads(jsonbytes.dumps(value)) == value


@pytest.mark.parametrize("text", ['[1e300, -1e300, 18446744073709551616, 9223372036854775807]', '{"a": NaN, "b": Infinity}', '"\\ud800"', '{"a": 123456789012345678901234567890}'])
def test_loads_reads_what_the_stdlib_reads(text: str) -> None:
    got, want = jsonbytes.loads(text.encode()), json.loads(text)
    assert repr(got) == repr(want)  # (NaN != NaN)


def test_json_too_deep_for_the_stdlib_is_too_deep_not_a_recursion_error() -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(jsonbytes.TooDeep):
        jsonbytes.loads(text)
    assert issubclass(jsonbytes.TooDeep, ValueError)  # (bad JSON to whoever reads a body)
    assert jsonbytes.loads(b"[" * 600 + b"]" * 600) is not None  # (deeper than orjson reads: the stdlib does)


def test_nan_is_written_as_null() -> None:
    assert json.loads(jsonbytes.dumps({"x": math.nan})) == {"x": None}


@pytest.mark.parametrize("data", [b"{", b'{"a": 1} x', b'"\xff"', b"", memoryview(b"[1,")])
def test_bad_json_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        jsonbytes.loads(data)


def test_nesting_past_the_parsers_recursion_is_too_deep_not_a_recursion_error() -> None:
    for text in (b"[" * 100_000, b"[" * 5000 + b"]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000):
        with pytest.raises(jsonbytes.TooDeep):
            jsonbytes.loads(text)


def test_loads_bounded_takes_max_depth_levels_and_no_more() -> None:
    depth = jsonbytes.MAX_DEPTH
    assert jsonbytes.loads_bounded(b"[" * depth + b"]" * depth) is not None
    for text in (b"[" * (depth + 1) + b"]" * (depth + 1), b'{"a": 1, "b": ' + b"[{}, " * depth + b"1" + b"]" * depth + b"}"):
        with pytest.raises(jsonbytes.TooDeep, match="nested more than 128 levels deep"):
            jsonbytes.loads_bounded(text)
    assert isinstance(jsonbytes.TooDeep(), ValueError)


@pytest.mark.parametrize("value, depth", [(1, 0), ("x", 0), ([], 1), ({}, 1), ([1, {"a": []}], 3),
                                          ({"a": [], "b": {"c": {"d": [[]]}}}, 5)])
def test_deeper_than_counts_levels_of_arrays_and_objects(value: Any, depth: int) -> None:
    assert not jsonbytes.deeper_than(value, depth)
    assert depth == 0 or jsonbytes.deeper_than(value, depth - 1)


@pytest.mark.parametrize("outputs, around", [
    ([{"output_type": "stream", "name": "stdout", "text": "x" * 100_000}, {"data": {"text/plain": "é"}}], "plain"),
    ([{"output_type": "stream", "name": "stdout", "text": "a\ud800b"}], "plain"),    # the outputs need the stdlib
    ([{"output_type": "stream", "name": "stdout", "text": "ok"}], "b\udc80"),        # the rest of it does
])
def test_an_encoded_list_is_written_once_as_it_is_known(outputs: list[Any], around: str) -> None:
    encoded = jsonbytes.Encoded(outputs)
    record = {"outputs": encoded, "code": around}
    assert json.loads(jsonbytes.dumps(record)) == json.loads(json.dumps({"outputs": outputs, "code": around}))
    made = encoded.json
    public = {**record, "stdout": "x", "again": [encoded]}
    assert json.loads(jsonbytes.dumps(public)) == json.loads(json.dumps({**public, "outputs": outputs,
                                                                          "again": [outputs]}))
    assert json.loads(ENCODERS[NDJSON].encode({"e": encoded})) == {"e": json.loads(json.dumps(outputs))}
    assert encoded.json is made  # encoded once, whatever holds it


def test_subclasses_of_builtins_are_written_as_their_base() -> None:
    import enum

    class Status(enum.StrEnum):
        DONE = "done"

    class Tagged(dict[str, Any]):
        pass

    value = {"status": Status.DONE, "tagged": Tagged(a=1), "n": type("N", (int,), {})(3)}
    assert json.loads(jsonbytes.dumps(value)) == {"status": "done", "tagged": {"a": 1}, "n": 3}


BIG = jsonbytes.LARGE


def stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def joined(parts: list[jsonbytes.Buffer]) -> bytes:
    return b"".join(bytes(part) for part in parts)


PNG = {"output_type": "display_data", "data": {"image/png": "iVBOR" * BIG}, "metadata": {}}


@pytest.mark.parametrize("outputs, viewed", [
    ([stream("stdout", "x" * BIG)], True),
    ([PNG, stream("stderr", "e\n"), {"output_type": "error", "ename": "E", "evalue": "v", "traceback": []},
      stream("stdout", "é\"\\\n\x01" * BIG)], True),
    ([stream("stdout", "a" * BIG), stream("stderr", "e\n"), stream("stdout", "é" * BIG)], False),
    ([stream("stdout", "a\ud800" * BIG)], False),   # the stdlib's escapes
    ([stream("stdout", "x" * BIG), PNG], False),
])
def test_a_document_in_pieces_means_what_it_means_whole(outputs: list[Any], viewed: bool) -> None:
    """An execution's public form (outputs encoded, stdout/stderr beside them) in pieces: the
    same JSON value as the stdlib writes; stdout, when it is the last output's text, as a view
    of the outputs' JSON, not encoded again."""
    encoded = jsonbytes.Encoded(jsonbytes.EncodedObject(o) if o["output_type"] != "stream" else o for o in outputs)
    texts = {name: "".join(o["text"] for o in outputs if o.get("name") == name) for name in ("stdout", "stderr")}
    public = {"id": "e1", "outputs": encoded, **texts, "result": None, "other": "y" * BIG}
    parts = jsonbytes.pieces(public)
    assert json.loads(joined(parts)) == json.loads(json.dumps({**public, "outputs": outputs}))
    assert any(isinstance(part, memoryview) and part.obj is encoded.json for part in parts) == viewed
    event = {"type": "execution", "execution": public, "execution_id": "e1"}
    assert json.loads(joined(jsonbytes.pieces(event))) == json.loads(json.dumps({**event, "execution": {
        **public, "outputs": outputs}}))


def test_a_string_that_is_not_the_outputs_text_is_encoded_itself() -> None:
    encoded = jsonbytes.Encoded([stream("stdout", "x" * BIG), stream("stdout", "y" * BIG)])
    for text in ("y" * BIG + "x" * BIG, "y" * (BIG - 1) + "z", "x" * BIG):
        assert json.loads(joined(jsonbytes.pieces({"outputs": encoded, "stdout": text}))) == {
            "outputs": json.loads(encoded.json), "stdout": text}


def test_small_documents_are_one_piece() -> None:
    value = {"outputs": jsonbytes.Encoded([stream("stdout", "2")]), "stdout": "2", "n": {1: "int key"}}
    assert jsonbytes.pieces(value) == [jsonbytes.dumps(value)]
    assert len(jsonbytes.pieces({"a": "x" * BIG, "b": 1, "c": "d"})) == 3  # what is around it in one run each


def test_an_encoded_object_is_encoded_once() -> None:
    output = jsonbytes.EncodedObject({"output_type": "display_data", "data": {"image/png": "A" * BIG}, "metadata": {}})
    event = {"type": "output", "output": output, "execution_id": "e1"}
    parts = jsonbytes.pieces(event)
    assert output.json in parts  # as it is, for its live event
    assert jsonbytes.Encoded([output]).json == b"[" + output.json + b"]"  # and in the record
    assert json.loads(jsonbytes.dumps(event)) == json.loads(joined(parts)) == json.loads(json.dumps(event))


@pytest.mark.parametrize("kind", ["list", "object"])
def test_threads_asking_at_once_for_an_encoding_get_one_made_once(kind: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # When an execution ends, the loop (its response) and the store's thread (its record) ask for
    # its outputs' JSON at the same moment: one makes it, the other waits for it.
    made: list[Any] = []
    real = jsonbytes.orjson_dumps

    def slow_dumps(value: Any) -> bytes:
        made.append(value)
        time.sleep(0.2)  # (the other thread asks meanwhile)
        return real(value)

    monkeypatch.setattr(jsonbytes, "orjson_dumps", slow_dumps)
    output = {"output_type": "display_data", "data": {"image/png": "A" * BIG}, "metadata": {}}
    encoded = jsonbytes.Encoded([output]) if kind == "list" else jsonbytes.EncodedObject(output)
    with ThreadPoolExecutor(2) as threads:
        first, second = threads.map(lambda _: encoded.json, range(2))
    assert len(made) == 1
    assert first is second
    assert json.loads(first) == ([output] if kind == "list" else output)


@pytest.mark.parametrize("text", [
    b'{"a": 1}', b' {"a": [1, {"b": "\\u00e9\\ud83d\\ude00"}]} ', b'{"huge": 123456789012345678901234567890}',
    b'[1]', b'"text"', b'{"a": 1}x', b'{"a": 1}, "b": {}', b'{"a": 1}{"b": 2}', b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\\ud800"}', b'{"a": NaN}', b'{"a": "\x01"}', b'{"a": 1,}', b'',
])
def test_is_object_accepts_one_json_object_large_or_small_as_orjson_does(text: bytes) -> None:
    """A large part (simdjson's) is judged as a small one (orjson's): one object, strictly JSON,
    nothing spliced before or after it, not even a byte order mark."""
    try:
        expected = isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        expected = False
    assert jsonbytes.is_object(text) is expected
    filler = b" " * jsonbytes.LARGE  # (whitespace: the same JSON, now large)
    assert jsonbytes.is_object(text + filler) is expected
    if text.startswith(b"{") and text.rstrip().endswith(b"}"):
        large = text[:1] + b'"filler": "' + b"x" * jsonbytes.LARGE + b'", ' + text[1:]
        assert jsonbytes.is_object(large) is expected


@pytest.mark.parametrize("media_type, end", [(NDJSON, b"}\n"), (SSE, b"}\n\n"), (None, b"}")])
def test_a_large_event_or_body_is_held_back_from_its_last_brace(media_type: str | None, end: bytes) -> None:
    """What leaves before a record is durable: everything up to the document's last ``}``."""
    encoded = jsonbytes.Encoded([PNG, stream("stdout", "x" * BIG)])
    public = {"id": "e1", "outputs": encoded, "stdout": "x" * BIG, "duration_ms": 1.5}
    event = {"type": "execution", "execution": public, "execution_id": "e1"}
    parts = ENCODERS[media_type].pieces(event) if media_type else jsonbytes.pieces(public)
    head, held = hold_end(parts)
    assert held == end and joined(head) + held == joined(parts)
    assert any(isinstance(part, memoryview) for part in head)  # (the large pieces as they were)
    with pytest.raises(ValueError):
        hold_end([b"[1, 2]"])
