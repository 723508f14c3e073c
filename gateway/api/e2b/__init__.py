"""The E2B dialect: the ``e2b`` and ``e2b-code-interpreter`` SDKs work unchanged against the gateway.

    E2B_API_URL=http://HOST:PORT/e2b              # the control plane (control.py)
    E2B_SANDBOX_URL=http://HOST:PORT/e2b/sandbox  # envd (envd.py) and the code interpreter (interpreter.py)
    E2B_API_KEY=e2b_...                           # code-gateway keys create USER --format e2b

One module per service, all over the same ``SandboxManager`` as our own API: a sandbox made
here is the same sandbox there. ``routes`` gives Tornado's rules for all of it.
"""

from __future__ import annotations

from typing import Any

from tornado.routing import PathMatches, Rule

from gateway.api.e2b import control, envd, interpreter
from gateway.api.e2b.base import NotSupportedHandler
from gateway.api.e2b.connect import CODECS, ConnectHandler
from gateway.api.e2b.envd_rpc.filesystem.filesystem_connect import FilesystemASGIApplication
from gateway.api.e2b.envd_rpc.process.process_connect import ProcessASGIApplication
from gateway.api.e2b.filesystem import FilesystemService
from gateway.api.e2b.process import ProcessService
from gateway.api.e2b.templates import E2BTemplates
from gateway.api.e2b.traffic import ENVD_PORT, INTERPRETER_PORT, PREFIX, SandboxGone, SandboxPort, \
    SandboxTrafficHandler
from gateway.sandboxes.files import SandboxFiles
from gateway.sandboxes.limits import ResourcePolicy
from gateway.sandboxes.processes import SandboxProcesses

ID = r"([0-9A-Za-z-]{1,64})"


class UnknownPortHandler(SandboxTrafficHandler):
    """Sandbox traffic for a port or path nobody serves here (E2B's proxy: the port is not open)."""

    async def _refuse(self, *args: str) -> None:
        port = self.request.headers.get("E2b-Sandbox-Port", "")
        raise SandboxGone.port_not_open(self.sandbox.id, port, self.request.path.removeprefix(PREFIX))

    get = post = put = patch = delete = _refuse


def routes(deps: dict[str, Any], *, templates: E2BTemplates, policy: ResourcePolicy, keepalive: float,
           files: SandboxFiles | None = None, processes: SandboxProcesses | None = None) -> list[Rule]:
    """The E2B rules, for ``web.Application``; ``deps`` are every handler's (keyring, sandboxes, origins).

    Without ``files`` (or ``processes``), envd's files (or commands) are not served.
    """
    control_deps = {**deps, "templates": templates}
    interpreter_deps = {**deps, "policy": policy, "keepalive": keepalive}

    def plane(path: str, handler: type, **extra: Any) -> Rule:
        return Rule(PathMatches("/e2b" + path), handler, {**control_deps, **extra})

    def envd_rule(path: str, handler: type) -> Rule:
        return Rule(SandboxPort(path, ENVD_PORT), handler, deps)

    def interpreter_rule(path: str, handler: type) -> Rule:
        return Rule(SandboxPort(path, INTERPRETER_PORT), handler, interpreter_deps)

    def rpc_rule(service: str, application: Any) -> Rule:
        return Rule(SandboxPort(rf"/{service}/\w+", ENVD_PORT), ConnectHandler, {**deps, "rpc": application})

    served: list[Rule] = []
    if files is not None:
        served += [Rule(SandboxPort("/files", ENVD_PORT), envd.FilesHandler, {**deps, "files": files}),
                   rpc_rule(r"filesystem\.Filesystem",
                            FilesystemASGIApplication(FilesystemService(files), codecs=CODECS))]
    if processes is not None:
        served.append(rpc_rule(r"process\.Process", ProcessASGIApplication(ProcessService(processes), codecs=CODECS)))
    return served + [
        plane("/sandboxes", control.SandboxesHandler, version=1),
        plane("/v2/sandboxes", control.SandboxesHandler, version=2),
        plane(f"/sandboxes/{ID}", control.SandboxHandler),
        plane(f"/sandboxes/{ID}/timeout", control.TimeoutHandler),
        plane(f"/sandboxes/{ID}/pause", control.PauseHandler),
        plane(f"/sandboxes/{ID}/resume", control.ResumeHandler),
        plane(f"/sandboxes/{ID}/connect", control.ConnectHandler),
        plane(f"/v2/sandboxes/{ID}/connect", control.ConnectHandler),
        plane(f"/sandboxes/{ID}/metrics", control.SandboxMetricsHandler),
        envd_rule("/health", envd.HealthHandler),
        envd_rule("/metrics", envd.MetricsHandler),
        envd_rule("/envs", envd.EnvsHandler),
        interpreter_rule("/health", interpreter.InterpreterHealthHandler),
        interpreter_rule("/execute", interpreter.ExecuteHandler),
        interpreter_rule("/contexts", interpreter.ContextsHandler),
        interpreter_rule(f"/contexts/{ID}", interpreter.ContextHandler),
        interpreter_rule(f"/contexts/{ID}/restart", interpreter.ContextRestartHandler),
        Rule(PathMatches(PREFIX + "(?:/.*)?"), UnknownPortHandler, deps),
        Rule(PathMatches("/e2b(?:/.*)?"), NotSupportedHandler, control_deps),
    ]
