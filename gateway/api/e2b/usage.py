"""Our usage figures (``SandboxManager.usage``) as E2B reports them (control plane and envd)."""

from __future__ import annotations

from typing import Any

from gateway import timestamps
from gateway.sandboxes.model import Sandbox


def cpu_count(sandbox: Sandbox) -> int:
    return max(1, round(sandbox.resources.cpu))


def cpu_percent(sandbox: Sandbox, usage: dict[str, Any]) -> float:
    """The average since the sandbox started: a cgroup counts CPU time, not a rate."""
    elapsed = max((timestamps.now() - sandbox.created_at).total_seconds(), 1e-3)
    seconds = usage["cpu"]["seconds"] or 0.0
    return round(min(100.0, 100.0 * seconds / (elapsed * cpu_count(sandbox))), 2)


def memory_used(usage: dict[str, Any]) -> int:
    return int(usage["memory"]["current_bytes"] or 0)


def disk_used(usage: dict[str, Any]) -> int:
    """Both tmpfs of a container (working directory and /tmp) count against its disk."""
    return int((usage["disk"]["workdir_bytes"] or 0) + (usage["disk"]["tmp_bytes"] or 0))
