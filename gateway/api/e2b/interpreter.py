"""The code interpreter of E2B's sandboxes (port 49999): ``POST /execute`` and ``/contexts``.

    POST   /e2b/sandbox/execute                 {"code", "context_id" | "language", "env_vars"} -> NDJSON lines
    GET    /e2b/sandbox/contexts                the sandbox's contexts
    POST   /e2b/sandbox/contexts                {"language", "cwd"} -> a new context
    POST   /e2b/sandbox/contexts/{id}/restart   ·  DELETE /e2b/sandbox/contexts/{id}

An execution is one of ours (``SandboxManager.submit``): it is in the sandbox's history and
notebook. Its lines follow as the kernel produces output (``results``), with a ``keepalive`` line
after every ``keepalive`` seconds of silence. A client that goes away interrupts the execution,
as E2B's server does (its kernel keeps its state). ``run_code``'s ``timeout`` is the SDK's own
(it hangs up, which interrupts); the gateway's bound is ``--max-timeout``. Errors are plain
text, as E2B's server answers them.

A client more than ``--max-send-buffer-bytes`` behind the stream is cut off as on our own
streams (``gateway.api.backpressure``): a last ``error`` line (``ClientTooSlow``, saying where the
execution is stored), then the end. That execution is not interrupted: it runs on and is stored.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from gateway.api.backpressure import DEFAULT_SEND_BUFFER, BehindWatch, end_stream, too_slow_message
from gateway.api.e2b import paths
from gateway.api.e2b.results import E2BLines, error_line
from gateway.api.e2b.traffic import SandboxTrafficHandler
from gateway.api.schemas import BodyValidator
from gateway.errors import GatewayError, InvalidRequest
from gateway.sandboxes.contexts import ContextNotFound
from gateway.sandboxes.inputs import check_code, check_env
from gateway.sandboxes.limits import ResourcePolicy
from gateway.sandboxes.manager import RunningExecution

log = logging.getLogger(__name__)


#: A string, or null (which E2B's SDKs send for "not given").
OPTIONAL_STRING = {"type": ["string", "null"]}
#: The bodies of execute and of a new context: their fields typed (400 naming the field), others let
#: through (as E2B's server does: a newer SDK may send more).
EXECUTE_BODY = BodyValidator({"type": "object", "required": ["code"], "properties": {
    "code": {"type": "string"}, "context_id": OPTIONAL_STRING, "language": OPTIONAL_STRING,
    "env_vars": {"type": ["object", "null"]}}})
CREATE_CONTEXT_BODY = BodyValidator({"type": "object", "properties": {
    "language": OPTIONAL_STRING, "cwd": OPTIONAL_STRING}})


def e2b_context(context: dict[str, Any]) -> dict[str, Any]:
    """Our context as E2B's: ``id``, ``language``, ``cwd`` (an absolute path under /home/user)."""
    return {"id": context["id"], "language": context["language"], "cwd": paths.absolute(context["cwd"])}


class InterpreterHandler(SandboxTrafficHandler):
    """Plain-text errors, as E2B's code interpreter server answers."""

    def initialize(self, policy: ResourcePolicy, keepalive: float = 15.0,  # type: ignore[override]
                   max_send_buffer: int = DEFAULT_SEND_BUFFER, **base: Any) -> None:
        super().initialize(**base)
        self.policy = policy
        self.keepalive = keepalive
        self.max_send_buffer = max_send_buffer

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, ContextNotFound):
            status_code, message = exc.status, f"Context {exc.context_id} not found"  # (E2B's words)
        elif isinstance(exc, GatewayError):
            status_code, message = exc.status, exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.get_message() or self._reason
        self.set_status(status_code)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(message)


class ExecuteHandler(InterpreterHandler):
    def initialize(self, **deps: Any) -> None:  # type: ignore[override]
        super().initialize(**deps)
        self.running: RunningExecution | None = None
        self._cut_off = False

    async def post(self) -> None:
        body = self.json_body(EXECUTE_BODY)
        code = check_code(body["code"])
        env = check_env(body.get("env_vars"), "env_vars")
        context, language = body.get("context_id"), body.get("language")
        if context and language:
            raise InvalidRequest("Only one of context_id or language can be provided")
        self.running = await self.sandboxes.submit(self.sandbox.id, self.user, code,
                                                   timeout=self.policy.max_timeout, env=env,
                                                   context=context or None, language=language or None)
        await self.stream(self.running)

    async def stream(self, running: RunningExecution) -> None:
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("X-Execution-Id", running.execution.id)
        if isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.stream.set_nodelay(True)
        lines = E2BLines()
        cursor = running.feed.cursor()
        watch = BehindWatch(self.max_send_buffer, behind=lambda: cursor.behind,
                            overrun=lambda: self._too_slow(running.execution.id))
        watch.start()
        try:
            async for event in cursor.follow(idle=self.keepalive):
                if self._cut_off:
                    break
                for line in [{"type": "keepalive"}] if event is None else lines.of(event):
                    self.write(json.dumps(line) + "\n")
                await self.flush()  # (awaited: a slow client slows only its own stream)
        except StreamClosedError:
            return  # on_connection_close interrupts it
        finally:
            watch.stop()
        if not self._cut_off:  # (else _too_slow ended it)
            self.finish()

    def _too_slow(self, execution_id: str) -> None:
        log.info("execution %s: ending the E2B stream of a client over %d bytes behind", execution_id,
                 self.max_send_buffer)
        self.sandboxes.metrics.slow_clients.labels(kind="e2b_stream").inc()
        self._cut_off = True
        line = error_line("ClientTooSlow", too_slow_message(self.max_send_buffer, execution_id), "")
        end_stream(self, (json.dumps(line) + "\n").encode())

    def on_connection_close(self) -> None:
        # A client cut off for being slow did not hang up: its execution goes on, as on our streams.
        if self.running is not None and not self.running.execution.finished and not self._cut_off:
            self.sandboxes.cancel_soon(self.running)


class ContextsHandler(InterpreterHandler):
    async def get(self) -> None:
        contexts = await self.sandboxes.list_contexts(self.sandbox.id, self.user)
        self.write_json([e2b_context(c) for c in contexts])

    async def post(self) -> None:
        body = self.json_body(CREATE_CONTEXT_BODY, allow_empty=True)
        cwd = paths.relative(body.get("cwd") or paths.HOME)
        context = await self.sandboxes.create_context(self.sandbox.id, self.user, body.get("language"), cwd)
        self.write_json(e2b_context(context))


class ContextHandler(InterpreterHandler):
    async def delete(self, context_id: str) -> None:
        await self.sandboxes.remove_context(self.sandbox.id, self.user, context_id)
        self.finish()


class ContextRestartHandler(InterpreterHandler):
    async def post(self, context_id: str) -> None:
        await self.sandboxes.restart_context(self.sandbox.id, self.user, context_id)
        self.finish()


class InterpreterHealthHandler(InterpreterHandler):
    wakes = False

    async def get(self) -> None:
        self.write_json("OK")
