"""What the gateway takes from the in-sandbox file tool: every field checked, sizes against the limits.

The tool runs as the sandbox's user, so a sandbox could make it answer anything; these answers
are what such a tool might send. (The real tool, attacked from a real sandbox, is in
tests/e2e/test_tool_stalls.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import FileNotFound, FileTooLarge, GatewayError, InvalidPath
from gateway.sandboxes.files import MAX_ENTRIES, FileOperationFailed, entry_of, listing_of, refusal

ENTRY = {"name": "a.csv", "path": "d/a.csv", "type": "file", "size": 12, "modified": "2026-01-01T00:00:00Z"}


def test_entries_are_checked_field_by_field() -> None:
    assert entry_of({**ENTRY, "extra": "dropped"}) == ENTRY
    assert entry_of({**ENTRY, "type": "directory", "size": None})["size"] is None
    for bad in ({"size": -1}, {"size": 1.5}, {"size": True}, {"size": "12"}, {"type": "device"},
                {"name": 7}, {"path": None}, {"modified": 0}):
        with pytest.raises(FileOperationFailed):
            entry_of({**ENTRY, **bad})
    # A size the tool reports is held against the limit, whatever the tool checked itself.
    assert entry_of(ENTRY, max_size=12)["size"] == 12
    with pytest.raises(FileOperationFailed):
        entry_of({**ENTRY, "size": 10 << 30}, max_size=100 << 20)


def test_listings_are_bounded_and_checked() -> None:
    ok: dict[str, Any] = {"path": "d", "entries": [ENTRY], "truncated": False}
    assert listing_of(ok) == ok
    for bad in ({"entries": "x"}, {"entries": [ENTRY] * (MAX_ENTRIES + 1)}, {"entries": [ENTRY, 3]},
                {"entries": [{**ENTRY, "size": -5}]}, {"truncated": "no"}, {"path": ["d"]}):
        with pytest.raises(FileOperationFailed):
            listing_of({**ok, **bad})


def test_refusals_become_typed_errors_with_bounded_messages() -> None:
    assert isinstance(refusal({"error": "file_not_found", "message": "no such file: x"}), FileNotFound)
    assert isinstance(refusal({"error": "invalid_path", "message": "m"}), InvalidPath)
    assert isinstance(refusal({"error": "too_large", "message": "m"}), FileTooLarge)
    unknown = refusal({"error": "anything", "message": "x" * 10_000})
    assert isinstance(unknown, GatewayError) and unknown.status == 502 and len(unknown.message) == 500
