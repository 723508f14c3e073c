"""The operator's resource policy: defaults and maxima for every sandbox limit.

    policy = ResourcePolicy(max_cpu=4)
    limits = policy.resolve({"cpu": 2, "memory_mb": 1024}, timeout=60)

Hard bounds (cpu 0 < c <= 16, memory 0 < m <= 32768 MiB) hold whatever the operator configures;
a request outside the bounds is a ``LimitOutOfRange`` (422) naming the field.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Int
from traitlets.config import LoggingConfigurable

from gateway.errors import LimitOutOfRange, NetworkNotAllowed
from gateway.sandboxes.model import ResourceLimits

#: field -> (exclusive lower bound, inclusive hard upper bound)
HARD_BOUNDS: dict[str, tuple[float, float]] = {
    "cpu": (0, 16),
    "memory_mb": (0, 32768),
    "disk_mb": (0, 1024 * 1024),
    "pids": (0, 1 << 22),
    "timeout": (0, 24 * 3600),
}


class ResourcePolicy(LoggingConfigurable):
    """Defaults and maxima of sandbox limits, set by the operator."""

    default_cpu = Float(1.0, help="CPU cores for a sandbox that asks for none.").tag(config=True)
    max_cpu = Float(16.0, help="Most CPU cores a sandbox may ask for (at most 16).").tag(config=True)
    default_memory_mb = Int(512, help="Memory (MiB) for a sandbox that asks for none.").tag(config=True)
    max_memory_mb = Int(32768, help="Most memory (MiB) a sandbox may ask for.").tag(config=True)
    default_disk_mb = Int(1024, help="Working-directory and /tmp size (MiB) by default.").tag(config=True)
    max_disk_mb = Int(16384, help="Most disk (MiB) a sandbox may ask for.").tag(config=True)
    default_pids = Int(256, help="Process/thread limit per sandbox by default.").tag(config=True)
    max_pids = Int(4096, help="Highest process/thread limit a sandbox may ask for.").tag(config=True)
    # The least a sandbox may ask for. The defaults are what the engine itself accepts (Docker
    # refuses under 0.01 CPUs and 6 MiB); raise them to what a kernel needs to start in your image.
    min_cpu = Float(0.01, help="Fewest CPU cores a sandbox may ask for.").tag(config=True)
    min_memory_mb = Int(6, help="Least memory (MiB) a sandbox may ask for.").tag(config=True)
    min_disk_mb = Int(1, help="Least disk (MiB) a sandbox may ask for.").tag(config=True)
    min_pids = Int(1, help="Lowest process/thread limit a sandbox may ask for.").tag(config=True)
    min_timeout = Float(
        0.1, help="Shortest per-execution timeout (s): below it, a timeout would end executions whose result is there."
    ).tag(config=True)
    default_timeout = Float(30.0, help="Per-execution timeout (s) by default.").tag(config=True)
    max_timeout = Float(3600.0, help="Longest per-execution timeout (s) a request may ask for.").tag(
        config=True
    )
    allow_network = Bool(
        False, help="Whether a sandbox may ask for network access (it never has it by default)."
    ).tag(config=True)

    def defaults(self) -> ResourceLimits:
        return ResourceLimits(
            cpu=self.default_cpu,
            memory_mb=self.default_memory_mb,
            disk_mb=self.default_disk_mb,
            pids=self.default_pids,
            network=False,
            timeout=self.default_timeout,
        )

    def maximum(self, field: str) -> float:
        configured: float = getattr(self, f"max_{field}")
        return min(configured, HARD_BOUNDS[field][1])

    def resolve(self, requested: dict[str, Any], *, prefix: str = "resources.") -> ResourceLimits:
        """Merge a request's limits over the defaults, or raise naming the first bad field."""
        merged = self.defaults().to_dict()
        for field, value in requested.items():
            if field == "network":
                if value and not self.allow_network:
                    raise NetworkNotAllowed("network access is not allowed on this gateway")
                merged[field] = bool(value)
                continue
            self.check(field, value, name=f"{prefix}{field}")
            merged[field] = value
        return ResourceLimits.from_dict(merged)

    def minimum(self, field: str) -> float:
        configured: float = getattr(self, f"min_{field}")
        return max(configured, HARD_BOUNDS[field][0])

    def check(self, field: str, value: float, *, name: str | None = None) -> None:
        """Raise ``LimitOutOfRange`` unless ``minimum(field) <= value <= maximum(field)`` (and above 0)."""
        name = name or field
        lower, upper = self.minimum(field), self.maximum(field)
        if not (0 < value and lower <= value <= upper):
            raise LimitOutOfRange(f"{name} must be at least {lower:g} and at most {upper:g}, got {value:g}")

    def timeout_for(self, requested: float | None, limits: ResourceLimits) -> float:
        """The timeout of one execution: the request's own, else the sandbox's."""
        if requested is None:
            return limits.timeout
        self.check("timeout", requested)
        return float(requested)
