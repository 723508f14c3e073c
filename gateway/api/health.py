"""Operations endpoints: ``/health`` (is it up, where do kernels run) and ``/ready``."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.api.base import APIHandler
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.manager import SandboxManager


class HealthHandler(APIHandler):
    auth_required = False

    def initialize(self, sandboxes: SandboxManager, launcher: KernelLauncher, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.sandboxes = sandboxes
        self.launcher = launcher

    def get(self) -> None:
        self.write_json(
            {
                "status": "degraded" if self.launcher.warnings else "ok",
                "version": __version__,
                "provisioner": self.launcher.resolved,
                "provisioner_requested": self.launcher.provisioner,
                "warnings": self.launcher.warnings,
                "sandboxes": self.sandboxes.counts(),
                "pool": self.sandboxes.pool.describe(),
                "engine": self.launcher.engine.describe() if self.launcher.engine is not None else None,
            }
        )
