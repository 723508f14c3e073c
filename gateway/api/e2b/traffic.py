"""Sandbox traffic (``E2B_SANDBOX_URL=http://HOST:PORT/e2b/sandbox``): routed by E2B's headers.

The SDKs send everything for a sandbox to one URL with ``E2b-Sandbox-Id`` and
``E2b-Sandbox-Port`` (49983: envd, the sandbox's daemon; 49999: the code interpreter).
``SandboxPort`` is a Tornado matcher on the path *and* that port, so each service has its own
handlers. No API key comes with this traffic: a request reaches a sandbox by its id and its
access token (``X-Access-Token``, or ``E2B-Traffic-Access-Token`` from the code interpreter),
compared in constant time; a sandbox that does not exist, has ended or is paused (and does not
resume by itself) answers as E2B's proxy does, 502 "... was not found", which the SDK reports as
``SandboxNotRunningException``.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from tornado import httputil
from tornado.routing import PathMatches

from gateway.api.e2b.base import E2BErrors
from gateway.api.e2b.paths import check_user
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.errors import GatewayError, SandboxNotFound, Unauthorized
from gateway.sandboxes.model import Sandbox, SandboxStatus

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
PREFIX = "/e2b/sandbox"


class SandboxPort(PathMatches):
    """Matches a path under ``/e2b/sandbox`` whose request names the sandbox port ``port``."""

    def __init__(self, path: str, port: int) -> None:
        super().__init__(PREFIX + path)
        self.port = str(port)

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("E2b-Sandbox-Port", "").strip() != self.port:
            return None
        return super().match(request)


class SandboxGone(GatewayError):
    """What E2B's proxy answers for a sandbox that is not running (the SDK looks for 'was not found')."""

    status = 502
    code = "sandbox_not_running"

    def __init__(self, sandbox_id: str, message: str | None = None) -> None:
        super().__init__(message or f"The sandbox {sandbox_id} was not found")

    @classmethod
    def port_not_open(cls, sandbox_id: str, port: str, path: str) -> SandboxGone:
        return cls(sandbox_id, f"The sandbox {sandbox_id} is running but port {port or '(none)'} is not open "
                   f"for {path or '/'}: this gateway serves envd ({ENVD_PORT}) and the code interpreter "
                   f"({INTERPRETER_PORT})")


#: What a sandbox id from a header may look like (ours are UUIDs).
SANDBOX_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class SandboxTrafficHandler(E2BErrors, SandboxAPIHandler):
    """Finds the sandbox a request is for and checks its access token; acts as the sandbox's owner."""

    auth_required = False
    #: Whether the request may reach a sandbox that is paused (health checks must not resume it).
    wakes = True

    async def routed_sandbox(self) -> str | None:
        sandbox_id = self.request.headers.get("E2b-Sandbox-Id", "").strip()
        return sandbox_id if SANDBOX_ID.fullmatch(sandbox_id) else None

    async def prepare(self) -> None:
        await super().prepare()  # (another replica holding the sandbox serves it: the request went there)
        if self._finished:
            return
        sandbox_id = self.request.headers.get("E2b-Sandbox-Id", "").strip()
        if not SANDBOX_ID.fullmatch(sandbox_id):
            raise SandboxGone(sandbox_id or "(none: the E2b-Sandbox-Id header is missing)")
        try:
            sandbox = await self.sandboxes.get(sandbox_id, self.sandboxes.admin_user)
        except SandboxNotFound:
            raise SandboxGone(sandbox_id) from None
        if not self.token_matches(sandbox):
            raise Unauthorized("unauthorized access: this sandbox needs its access token (X-Access-Token)")
        if sandbox.status in (SandboxStatus.TERMINATING, SandboxStatus.TERMINATED, SandboxStatus.CREATING) or (
                sandbox.status == SandboxStatus.PAUSED and not (self.wakes and sandbox.auto_resume)):
            raise SandboxGone(sandbox_id)
        if self.request.headers.get("E2b-Sandbox-Port", "").strip() == str(ENVD_PORT):
            check_user(self.request.headers.get("Authorization", ""))
        self.sandbox = sandbox
        self.current_user = sandbox.owner

    def token_matches(self, sandbox: Sandbox) -> bool:
        headers = self.request.headers
        given = headers.get("X-Access-Token") or headers.get("E2B-Traffic-Access-Token") or ""
        return hmac.compare_digest(given.encode(), sandbox.access_token.encode())
