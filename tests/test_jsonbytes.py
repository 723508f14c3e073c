"""jsonbytes: orjson where it can, the stdlib where orjson refuses; never less than ``json`` takes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gateway import jsonbytes


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


def test_nan_is_written_as_null() -> None:
    assert json.loads(jsonbytes.dumps({"x": math.nan})) == {"x": None}


@pytest.mark.parametrize("data", [b"{", b'{"a": 1} x', b'"\xff"', b"", memoryview(b"[1,")])
def test_bad_json_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError):
        jsonbytes.loads(data)


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
    assert json.loads(jsonbytes.orjson_line({"e": encoded})) == {"e": json.loads(json.dumps(outputs))}
    assert encoded.json is made  # encoded once, whatever holds it


def test_subclasses_of_builtins_are_written_as_their_base() -> None:
    import enum

    class Status(enum.StrEnum):
        DONE = "done"

    class Tagged(dict[str, Any]):
        pass

    value = {"status": Status.DONE, "tagged": Tagged(a=1), "n": type("N", (int,), {})(3)}
    assert json.loads(jsonbytes.dumps(value)) == {"status": "done", "tagged": {"a": 1}, "n": 3}
