"""The route table: every URL the gateway serves, and the Tornado application around it.

    app = make_app(keyring=keyring, sandboxes=manager, launcher=launcher)
"""

from __future__ import annotations

from typing import Any

from tornado import web

from gateway.api import e2b
from gateway.api.backpressure import DEFAULT_SEND_BUFFER
from gateway.api.contexts import ContextHandler, ContextRestartHandler, ContextsHandler
from gateway.api.e2b.templates import E2BTemplates
from gateway.api.base import NotFoundHandler
from gateway.api.executions import (
    ExecuteHandler,
    ExecutionEventsHandler,
    ExecutionHandler,
    SandboxExecutionsHandler,
)
from gateway.api.files import FileHandler, FileListHandler
from gateway.api.channels import KernelChannelsHandler, jupyter_settings
from gateway.api.health import HealthHandler, MetricsHandler, ReadyHandler, request_logger
from gateway.api.jupyter import (
    ApiHandler,
    KernelActionHandler,
    KernelHandler,
    KernelSpecHandler,
    KernelSpecsHandler,
    KernelsHandler,
)
from gateway.api.mcp import McpHandler
from gateway.api.notebooks import NotebookHandler
from gateway.api.playground import playground_routes
from gateway.api.openapi import OpenAPIHandler
from gateway.api.sockets import SandboxSocketHandler
from gateway.api.sandboxes import (
    InterruptHandler,
    PauseHandler,
    RestartHandler,
    ResumeHandler,
    SandboxesHandler,
    SandboxHandler,
    SandboxMetricsHandler,
    UsageHandler,
)
from gateway.api.events import EventsHandler
from gateway.auth import KeyRing
from gateway.mcp.server import McpService
from gateway.metrics import GatewayMetrics
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.files import SandboxFiles
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.processes import SandboxProcesses

ID = r"([0-9a-fA-F-]{1,64})"
V1 = "/api/v1"


def make_app(*, keyring: KeyRing, sandboxes: SandboxManager, launcher: KernelLauncher,
             keepalive: float = 15.0, allow_origins: list[str] | None = None,
             max_send_buffer: int = DEFAULT_SEND_BUFFER,
             files: SandboxFiles | None = None, metrics: GatewayMetrics | None = None,
             mcp: McpService | None = None, e2b_templates: E2BTemplates | None = None,
             processes: SandboxProcesses | None = None, **settings: Any) -> web.Application:
    deps = {"keyring": keyring, "sandboxes": sandboxes, "allow_origins": allow_origins or [],
            "max_send_buffer": max_send_buffer}
    with_launcher = {**deps, "launcher": launcher}
    metrics = metrics or sandboxes.metrics
    routes: list[Any] = [
        (rf"{V1}/sandboxes", SandboxesHandler, deps),
        (rf"{V1}/sandboxes/{ID}", SandboxHandler, deps),
        (rf"{V1}/sandboxes/{ID}/execute", ExecuteHandler, {**deps, "keepalive": keepalive}),
        (rf"{V1}/sandboxes/{ID}/executions", SandboxExecutionsHandler, deps),
        (rf"{V1}/sandboxes/{ID}/stream", SandboxSocketHandler, deps),
        (rf"{V1}/sandboxes/{ID}/interrupt", InterruptHandler, deps),
        (rf"{V1}/sandboxes/{ID}/restart", RestartHandler, deps),
        (rf"{V1}/sandboxes/{ID}/pause", PauseHandler, deps),
        (rf"{V1}/sandboxes/{ID}/resume", ResumeHandler, deps),
        (rf"{V1}/sandboxes/{ID}/metrics", SandboxMetricsHandler, deps),
        (rf"{V1}/usage", UsageHandler, deps),
        (rf"{V1}/events", EventsHandler, {"keyring": keyring, "events": sandboxes.events,
                                          "admin_user": sandboxes.admin_user, "keepalive": keepalive}),
        (rf"{V1}/sandboxes/{ID}/notebook", NotebookHandler, deps),
        (rf"{V1}/sandboxes/{ID}/contexts", ContextsHandler, deps),
        (rf"{V1}/sandboxes/{ID}/contexts/{ID}", ContextHandler, deps),
        (rf"{V1}/sandboxes/{ID}/contexts/{ID}/restart", ContextRestartHandler, deps),
        (rf"{V1}/executions/{ID}", ExecutionHandler, deps),
        (rf"{V1}/executions/{ID}/events", ExecutionEventsHandler, {**deps, "keepalive": keepalive}),
        (rf"{V1}/openapi.json", OpenAPIHandler, with_launcher),
        (r"/health", HealthHandler, with_launcher),
        (r"/ready", ReadyHandler, with_launcher),
        (r"/metrics", MetricsHandler, {**with_launcher, "metrics": metrics}),
        # The Jupyter Server kernel API (what Kernel Gateway serves), for notebook front ends.
        (r"/api", ApiHandler, with_launcher),
        (r"/api/kernelspecs", KernelSpecsHandler, with_launcher),
        (r"/api/kernelspecs/([^/]+)", KernelSpecHandler, with_launcher),
        (r"/api/kernels", KernelsHandler, with_launcher),
        (rf"/api/kernels/{ID}", KernelHandler, with_launcher),
        (rf"/api/kernels/{ID}/(interrupt|restart)", KernelActionHandler, with_launcher),
        (rf"/api/kernels/(?P<kernel_id>{ID[1:-1]})/channels", KernelChannelsHandler, deps),
    ]
    if files is not None:
        routes += [
            (rf"{V1}/sandboxes/{ID}/files/?", FileListHandler, {**deps, "files": files}),
            (rf"{V1}/sandboxes/{ID}/files/(.+)", FileHandler, {**deps, "files": files}),
        ]
    if mcp is not None:
        routes.append((r"/mcp/?", McpHandler, {**deps, "mcp": mcp}))
    # E2B's control plane under /e2b, its sandbox traffic under /e2b/sandbox (routed by port header).
    routes += e2b.routes(deps, templates=e2b_templates or E2BTemplates(), policy=sandboxes.policy,
                         keepalive=keepalive, files=files, processes=processes)
    routes += playground_routes()
    return web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"keyring": keyring, "allow_origins": allow_origins or []},
        # WebSocket pings keep idle sockets alive through proxies and find dead peers: one that has
        # not answered a ping by the next is gone (tornado allows no longer timeout than the interval).
        websocket_ping_interval=keepalive,
        websocket_ping_timeout=keepalive,
        log_function=request_logger(metrics),
        **jupyter_settings(keyring, sandboxes),
        **settings,
    )
