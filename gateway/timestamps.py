"""UTC timestamps as the API shows them: ISO 8601 with a ``Z`` suffix."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def to_iso(moment: datetime | None) -> str | None:
    """``2026-11-28T23:20:10.123456Z`` (or None)."""
    if moment is None:
        return None
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def from_iso(text: str | None) -> datetime | None:
    """Inverse of :func:`to_iso`."""
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
