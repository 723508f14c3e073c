"""What a pause saved and lost and what a resume restored, as the sandbox's record keeps them: bounded.

    budget = Budget()                                     # MAX_REPORT_CHARS for the whole report
    lost = bounded(entries, budget, "lost")               # as many as fit, each of them clipped
    report = {"files": 3, "lost": lost, **budget.summary()}   # truncated, omitted: {"lost": 999_000}

Everything in these reports comes from the sandbox: names of its files, of its variables and of
their types, the reasons they were not kept, as its tool and its kernel report them (and code in
a sandbox controls both). A sandbox with a million unpicklable variables or files with long
names must not make the gateway store, and answer in every ``GET`` of the sandbox, a report of
that size: each entry is kept only if it has its plain shape (text, or an object of texts), each
text clipped at ``MAX_TEXT_CHARS``, and entries are kept while the report's JSON stays within
``MAX_REPORT_CHARS``; the rest are counted in ``omitted`` and the report says it is ``truncated``.
"""

from __future__ import annotations

from typing import Any

from gateway import jsonbytes

#: Most characters of a report's JSON (all of its lists together, and its plain fields).
MAX_REPORT_CHARS = 64 << 10
#: Longest text of one entry (a name, a type, a reason) kept whole: the rest is cut, with "…".
MAX_TEXT_CHARS = 1024
#: What a report's plain fields take at most (counts, sizes, its time, the summary).
PLAIN_FIELDS_CHARS = 1024


class Budget:
    """What is left of a report's ``MAX_REPORT_CHARS`` and what did not fit, by field."""

    def __init__(self, chars: int = MAX_REPORT_CHARS) -> None:
        self.left = chars - PLAIN_FIELDS_CHARS
        self.omitted: dict[str, int] = {}

    def take(self, chars: int) -> bool:
        """Spend ``chars`` if they fit (False, and nothing spent, if not)."""
        if chars > self.left:
            return False
        self.left -= chars
        return True

    def omit(self, field: str, count: int = 1) -> None:
        if count:
            self.omitted[field] = self.omitted.get(field, 0) + count

    @property
    def truncated(self) -> bool:
        return bool(self.omitted)

    def summary(self) -> dict[str, Any]:
        """The fields saying what was left out: ``truncated`` and ``omitted`` (entries by field)."""
        return {"truncated": self.truncated, "omitted": dict(self.omitted)}


def clipped(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 1] + "…"


def plain(entry: Any) -> Any:
    """``entry`` clipped, if it is text or an object of texts (a lost entry's name, type and reason); else None."""
    if isinstance(entry, str):
        return clipped(entry)
    if isinstance(entry, dict) and all(isinstance(key, str) and isinstance(value, str) for key, value in entry.items()):
        return {clipped(key): clipped(value) for key, value in entry.items()}
    return None


def bounded(entries: Any, budget: Budget, field: str) -> list[Any]:
    """The first ``entries`` that fit in ``budget``, in order, each clipped (``plain``); the rest,
    and any not of a plain shape, counted as ``field``'s omitted (not a list: one omitted)."""
    if not isinstance(entries, (list, tuple)):
        budget.omit(field)
        return []
    kept: list[Any] = []
    for index, entry in enumerate(entries):
        entry = plain(entry)
        if entry is None:
            budget.omit(field)
        elif budget.take(len(jsonbytes.dumps(entry)) + 1):
            kept.append(entry)
        else:  # full: the rest are only counted
            budget.omit(field, len(entries) - index)
            break
    return kept


def bounded_names(names: Any, budget: Budget, field: str) -> dict[str, str]:
    """``bounded`` for an object of names (the modules kept: alias -> module)."""
    if not isinstance(names, dict):
        budget.omit(field)
        return {}
    pairs = bounded([{"alias": alias, "module": module} for alias, module in names.items()], budget, field)
    return {pair["alias"]: pair["module"] for pair in pairs}


def total(report: dict[str, Any], field: str) -> int:
    """How many entries ``field`` had before the report was bounded (those kept and those omitted)."""
    return len(report.get(field) or ()) + int((report.get("omitted") or {}).get(field, 0))
