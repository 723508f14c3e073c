"""The operator's lifetime policy: how long a sandbox lives, and how long it may sit idle.

    policy = LifetimePolicy(default_lifetime=3600, max_lifetime=86400, default_idle_timeout=600)
    terms = policy.resolve({"lifetime": 120, "on_idle": "terminate"})   # or LimitOutOfRange naming the field
    sandbox.expires_at = policy.expiry(terms.lifetime)

A sandbox expires at ``expires_at`` (``lifetime`` seconds after it was created, or after the last
``PATCH`` that set a new lifetime) whatever it is doing, and is paused or terminated (``on_idle``)
after ``idle_timeout`` seconds without activity. ``SandboxReaper`` enforces both.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from gateway import timestamps
from gateway.errors import LimitOutOfRange
from gateway.sandboxes.model import ON_IDLE

#: The API's names of the lifetime fields of a create (or PATCH) body.
FIELDS = ("lifetime", "idle_timeout", "on_idle", "auto_resume")


@dataclasses.dataclass(frozen=True)
class LifetimeTerms:
    """What a request asked for, validated; None where it asked for nothing."""

    lifetime: float | None = None
    idle_timeout: float | None = None
    on_idle: str | None = None
    auto_resume: bool | None = None


class LifetimePolicy(LoggingConfigurable):
    default_lifetime = Float(3600.0, help="Seconds a sandbox lives unless it asks otherwise ('lifetime').").tag(
        config=True
    )
    max_lifetime = Float(86400.0, help="Longest lifetime (s) a sandbox may ask for, also through PATCH.").tag(
        config=True
    )
    default_idle_timeout = Float(
        600.0, help="Seconds without activity after which a sandbox is paused or terminated ('on_idle')."
    ).tag(config=True)

    def resolve(self, requested: dict[str, Any]) -> LifetimeTerms:
        """The lifetime fields of ``requested`` checked against the policy (``LimitOutOfRange`` naming the field)."""
        lifetime = requested.get("lifetime")
        idle_timeout = requested.get("idle_timeout")
        on_idle = requested.get("on_idle")
        if lifetime is not None:
            self._check("lifetime", lifetime, self.max_lifetime)
        if idle_timeout is not None:
            self._check("idle_timeout", idle_timeout, self.max_lifetime)
        if on_idle is not None and on_idle not in ON_IDLE:
            raise LimitOutOfRange(f"on_idle must be one of {', '.join(ON_IDLE)}, got {on_idle!r}")
        auto_resume = requested.get("auto_resume")
        return LifetimeTerms(
            lifetime=None if lifetime is None else float(lifetime),
            idle_timeout=None if idle_timeout is None else float(idle_timeout),
            on_idle=on_idle,
            auto_resume=None if auto_resume is None else bool(auto_resume),
        )

    @staticmethod
    def _check(field: str, value: float, upper: float) -> None:
        if not 0 < value <= upper:
            raise LimitOutOfRange(f"{field} must be greater than 0 and at most {upper:g} seconds, got {value:g}")

    def expiry(self, lifetime: float | None, start: datetime | None = None) -> datetime:
        """When a sandbox living ``lifetime`` seconds (default: the policy's) from ``start`` (now) expires."""
        return (start or timestamps.now()) + timedelta(seconds=self.default_lifetime if lifetime is None else lifetime)
