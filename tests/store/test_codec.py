"""codec.encode: the same JSON as the stdlib's, with long strings encoded a slice at a time and the
GIL released between slices (so the loop's thread runs while the store's encodes a big record)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.store import codec


@pytest.mark.parametrize("value", [
    {"id": "e", "outputs": [], "n": 1.5, "ok": True, "none": None},
    {"outputs": [{"data": {"image/png": "iVBOR" * 40000, "text/plain": "<Figure>"}}], 1: ("a", "b" * 70000)},
    ["é\u2028\U0001F600\"\\\x00\n" * 20000, {"nested": ["x" * (codec.SLICE * 3 + 1)]}],
])
def test_encoding_matches_the_standard_library(value: Any) -> None:
    assert json.loads(codec.encode(value)) == json.loads(json.dumps(value))
    assert codec.decode(codec.encode(value)) == json.loads(json.dumps(value))


def test_long_strings_release_the_gil_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    yields: list[float] = []
    monkeypatch.setattr(codec.time, "sleep", yields.append)
    codec.encode({"id": "small", "outputs": ["short"] * 100})
    assert yields == []  # the one-shot path
    codec.encode({"outputs": [{"data": {"image/png": "A" * (codec.SLICE * 10)}}]})
    assert yields == [0] * 10
