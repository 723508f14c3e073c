"""Pause and restore reports within MAX_REPORT_CHARS: plain entries kept while they fit, each clipped, the rest counted."""

from __future__ import annotations

from gateway import jsonbytes
from gateway.sandboxes.reports import MAX_REPORT_CHARS, MAX_TEXT_CHARS, Budget, bounded, bounded_names, total


def lost(n: int, name_chars: int = 200) -> list[dict[str, str]]:
    return [{"name": f"g{i}_" + "x" * name_chars, "type": "generator", "reason": "cannot be saved"} for i in range(n)]


def test_small_reports_are_kept_whole() -> None:
    budget = Budget()
    report = {"lost": bounded(lost(3), budget, "lost"), "modules": bounded_names({"pd": "pandas"}, budget, "modules"),
              **budget.summary()}
    assert report == {"lost": lost(3), "modules": {"pd": "pandas"}, "truncated": False, "omitted": {}}


def test_a_million_entries_are_kept_while_they_fit_and_the_rest_counted() -> None:
    budget = Budget()
    entries = lost(1_000_000)
    report = {"lost": bounded(entries, budget, "lost"), "variables": bounded(["v"] * 10, budget, "variables"),
              "files": 3, "at": "2026-01-01T00:00:00.000000Z", **budget.summary()}
    assert len(jsonbytes.dumps(report)) <= MAX_REPORT_CHARS  # (as the gateway writes it: bytes, at least the characters)
    assert report["lost"] == entries[:len(report["lost"])] and len(report["lost"]) > 100
    assert report["truncated"] is True and report["omitted"] == {"lost": 1_000_000 - len(report["lost"])}
    assert report["variables"] == ["v"] * 10  # (what is left is enough for these)
    assert total(report, "lost") == 1_000_000 and total(report, "variables") == 10 and total(report, "modules") == 0


def test_long_texts_are_clipped_and_entries_of_no_plain_shape_are_only_counted() -> None:
    budget = Budget()
    kept = bounded(["n" * 100_000, {"name": "x" * 5000, "type": "t"}, [1, 2], {"name": ["deep"]}, 7], budget, "lost")
    assert [len(kept[0]), len(kept[1]["name"]), kept[1]["type"]] == [MAX_TEXT_CHARS, MAX_TEXT_CHARS, "t"]
    assert kept[0].endswith("…") and budget.omitted == {"lost": 3}
    assert bounded("not a list", budget, "variables") == [] and bounded_names([1], budget, "modules") == {}
    assert budget.omitted == {"lost": 3, "variables": 1, "modules": 1}
    assert bounded_names({"a": "m", "b": 2}, budget, "modules") == {"a": "m"} and budget.omitted["modules"] == 2
