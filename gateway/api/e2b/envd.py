"""envd's plain HTTP routes (port 49983): ``/health``, ``/metrics``, ``/envs``.

``GET /health`` is what ``is_running`` asks: 204 while the sandbox runs (a paused one is not
woken: it answers 502, "not running", as E2B's does).
"""

from __future__ import annotations

from gateway import timestamps
from gateway.api.e2b.traffic import SandboxTrafficHandler
from gateway.api.e2b.usage import cpu_count, cpu_percent, disk_used, memory_used


class HealthHandler(SandboxTrafficHandler):
    wakes = False

    async def get(self) -> None:
        self.set_status(204)
        self.finish()


class MetricsHandler(SandboxTrafficHandler):
    """envd's ``Metrics``: what the sandbox uses now, from its cgroup (or process tree)."""

    wakes = False

    async def get(self) -> None:
        usage = await self.sandboxes.usage(self.sandbox.id, self.user)
        self.write_json({
            "ts": int(timestamps.now().timestamp()),
            "cpu_count": cpu_count(self.sandbox),
            "cpu_used_pct": cpu_percent(self.sandbox, usage),
            "mem_total": usage["memory"]["limit_bytes"],
            "mem_used": memory_used(usage),
            "disk_total": usage["disk"]["limit_bytes"],
            "disk_used": disk_used(usage),
        })


class EnvsHandler(SandboxTrafficHandler):
    """The sandbox's environment variables (what it was created with)."""

    async def get(self) -> None:
        self.write_json(dict(self.sandbox.env))
