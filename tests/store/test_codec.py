"""codec.encode: the same JSON values as the stdlib's (orjson, or the stdlib where orjson refuses a
value); on the stdlib's path long strings are encoded a slice at a time with the GIL released
between slices (so the loop's thread runs while the store's encodes a big record)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.store import codec


@pytest.mark.parametrize("value", [
    {"id": "e", "outputs": [], "n": 1.5, "ok": True, "none": None},
    {"outputs": [{"data": {"image/png": "iVBOR" * 40000, "text/plain": "<Figure>"}}], 1: ("a", "b" * 70000)},
    ["é\u2028\U0001F600\"\\\x00\n" * 20000, {"nested": ["x" * (codec.SLICE * 3 + 1)]}],
    # What orjson refuses: a lone surrogate (a kernel can print one), an integer past 64 bits.
    {"text": "a\ud800b" * 30000, "big": 1 << 70, "outputs": [{"text": "x" * (codec.SLICE + 5)}]},
])
def test_encoding_matches_the_standard_library(value: Any) -> None:
    assert json.loads(codec.encode(value)) == json.loads(json.dumps(value))
    assert codec.decode(codec.encode(value)) == json.loads(json.dumps(value))


def test_the_stdlib_path_releases_the_gil_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    yields: list[float] = []
    monkeypatch.setattr(codec.time, "sleep", yields.append)
    codec.encode({"id": "small", "outputs": ["short"] * 100, "odd": "\ud800"})
    assert yields == []  # the one-shot path
    codec.encode({"outputs": [{"data": {"image/png": "A" * (codec.SLICE * 10)}}], "odd": "\ud800"})
    assert yields == [0] * 10
    codec.encode({"outputs": [{"data": {"image/png": "A" * (codec.SLICE * 10)}}]})
    assert yields == [0] * 10  # orjson takes it in one go
