"""Operations endpoints: ``/health`` (is it up, where do kernels run), ``/ready`` and ``/metrics``.

None needs a key: load balancers and Prometheus scrape them. They reveal counts, never ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tornado import web

from gateway import __version__
from gateway.api.base import APIHandler, scrub_uri
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.manager import SandboxManager

access_log = logging.getLogger("tornado.access")


class OperationsHandler(APIHandler):
    auth_required = False

    def initialize(self, sandboxes: SandboxManager, launcher: KernelLauncher, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.sandboxes = sandboxes
        self.launcher = launcher


class HealthHandler(OperationsHandler):
    def get(self) -> None:
        store = self.sandboxes.store
        self.write_json(
            {
                "status": "degraded" if self.launcher.warnings or store.problem else "ok",
                "version": __version__,
                "provisioner": self.launcher.resolved,
                "provisioner_requested": self.launcher.provisioner,
                "warnings": self.launcher.warnings,
                "sandboxes": self.sandboxes.counts(),
                "pool": self.sandboxes.pool.describe(),
                "engine": self.launcher.engine.describe() if self.launcher.engine is not None else None,
                "runtimes": self.sandboxes.isolation.describe(self.launcher.unavailable()),
                "store": store.describe(),
            }
        )


class ReadyHandler(OperationsHandler):
    """200 when new sandboxes can start here; 503 (with the reasons) when they cannot (engine, store)."""

    async def get(self) -> None:
        engine = self.launcher.engine
        problems = await engine.problems() if engine is not None else []
        store = self.sandboxes.store
        if store.problem is not None:
            problems.append(f"the store cannot commit writes ({store.problem}); "
                            f"{store.held_writes()} held and retried, new work refused")
        self.write_json({"ready": not problems, "problems": problems}, status=503 if problems else 200)


class MetricsHandler(OperationsHandler):
    def initialize(self, metrics: GatewayMetrics, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.render())


def request_logger(metrics: GatewayMetrics) -> Callable[[web.RequestHandler], None]:
    """Tornado's ``log_function``: the access log line, and the request in the metrics."""

    def log_request(handler: web.RequestHandler) -> None:
        status = handler.get_status()
        seconds = handler.request.request_time()
        metrics.request_served(handler.request.method or "", status, seconds)
        # Like Jupyter Server: successes at debug (one INFO line per execution is a real cost at
        # thousands of executions a second), client errors as warnings, server errors as errors.
        level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        request = handler.request
        access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, scrub_uri(request.uri or ""),
                       request.remote_ip, seconds * 1000)

    return log_request
