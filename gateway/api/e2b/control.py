"""E2B's control plane (``E2B_API_URL=http://HOST:PORT/e2b``) over the SandboxManager.

    POST /e2b/sandboxes · /e2b/v2/sandboxes          create (templateID, timeout, metadata, envVars, secure)
    GET  /e2b/sandboxes · /e2b/v2/sandboxes          list (v2: state, metadata, limit, nextToken, order)
    GET|DELETE /e2b/sandboxes/{id}                   info, kill
    POST /e2b/sandboxes/{id}/timeout|pause|resume    set_timeout, pause, resume (v1)
    POST /e2b/[v2/]sandboxes/{id}/connect            connect: resumes a paused sandbox, only extends the TTL
    GET  /e2b/sandboxes/{id}/metrics                 get_metrics

An E2B sandbox is one of ours: the same id, owner, lifetime (E2B's ``timeout`` is our
``lifetime``), history and notebook. E2B forgets killed sandboxes, so a terminated one is 404
here, as is one of another user (E2B's answer to both). Every sandbox's traffic needs its access
token (``envdAccessToken``, also sent as ``trafficAccessToken``), as E2B's current SDK assumes:
``secure: false`` of older SDKs is accepted, and the token is still required.
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import datetime
from typing import Any

from gateway import timestamps
from gateway.api.e2b.base import CLIENT_ID, ENVD_VERSION, E2BHandler, NotSupported
from gateway.api.e2b.templates import E2BTemplates
from gateway.api.e2b.usage import cpu_count, cpu_percent, disk_used, memory_used
from gateway.api.forwarding import HolderRouting
from gateway.api.schemas import BodyValidator
from gateway.errors import InvalidRequest, NotFound, SandboxNotFound
from gateway.sandboxes.inputs import check_env
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import Sandbox, SandboxStatus

#: Our statuses as E2B's two states (others are not shown: creating, terminating, terminated).
STATES = {SandboxStatus.RUNNING: "running", SandboxStatus.FAILED: "running", SandboxStatus.PAUSED: "paused"}
#: The most sandboxes one page of ``GET /v2/sandboxes`` holds (E2B's limit too).
MAX_PAGE = 100


class E2BSandboxNotFound(NotFound):
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")


def e2b_state(sandbox: Sandbox) -> str | None:
    return STATES.get(sandbox.status)


def created_body(sandbox: Sandbox) -> dict[str, Any]:
    """E2B's ``Sandbox``: what create, connect and resume answer."""
    return {
        "templateID": sandbox.template or "base",
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sandbox.access_token,
        "trafficAccessToken": sandbox.access_token,
        "domain": None,
    }


def listed_body(sandbox: Sandbox) -> dict[str, Any]:
    """E2B's ``ListedSandbox``."""
    limits = sandbox.resources
    return {
        "templateID": sandbox.template or "base",
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "startedAt": timestamps.to_iso(sandbox.created_at),
        "endAt": timestamps.to_iso(sandbox.expires_at or sandbox.created_at),
        "cpuCount": cpu_count(sandbox),
        "memoryMB": int(limits.memory_mb),
        "diskSizeMB": int(limits.disk_mb),
        "state": e2b_state(sandbox),
        "envdVersion": ENVD_VERSION,
        "metadata": {str(k): str(v) for k, v in sandbox.metadata.items()},
    }


def detail_body(sandbox: Sandbox) -> dict[str, Any]:
    """E2B's ``SandboxDetail``: what ``get_info`` reads."""
    return {**listed_body(sandbox), "envdAccessToken": sandbox.access_token,
            "allowInternetAccess": sandbox.resources.network, "domain": None}


class ControlHandler(HolderRouting, E2BHandler):
    def initialize(self, sandboxes: SandboxManager, templates: E2BTemplates, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.sandboxes = sandboxes
        self.templates = templates

    async def owned(self, sandbox_id: str) -> Sandbox:
        """The caller's sandbox, unless it ended (E2B forgets killed sandboxes: 404 like a stranger's)."""
        try:
            sandbox = await self.sandboxes.get(sandbox_id, self.user)
        except SandboxNotFound:
            raise E2BSandboxNotFound(sandbox_id) from None
        if e2b_state(sandbox) is None:
            raise E2BSandboxNotFound(sandbox_id)
        return sandbox

    def body(self) -> dict[str, Any]:
        return self.json_body(allow_empty=True)

    def seconds(self, body: dict[str, Any], field: str) -> int | None:
        value = body.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"field '{field}' must be an integer number of seconds")
        return value


def string_map(body: dict[str, Any], field: str) -> dict[str, str]:
    value = body.get(field) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest(f"field '{field}' must be an object of strings")
    return dict(value)


def refuse_unsupported(body: dict[str, Any]) -> None:
    """What E2B's create takes and this gateway does not do: refused, naming it."""
    if body.get("autoPause"):
        raise NotSupported("autoPause (pausing a sandbox when its timeout ends; here it is killed)")
    if body.get("network"):
        raise NotSupported("network (egress rules and public traffic settings)")
    if body.get("mcp"):
        raise NotSupported("mcp (the MCP gateway inside a sandbox)")
    if body.get("iam"):
        raise NotSupported("iam (workload identity tokens)")
    if body.get("volumeMounts"):
        raise NotSupported("volumeMounts (volumes)")


BOOLEAN = {"type": "boolean"}
#: E2B's create body (``NewSandbox``): the fields this gateway reads, typed as E2B's API types them (400
#: naming the field); others let through, to be refused by name (``refuse_unsupported``) or ignored.
CREATE_BODY = BodyValidator({"type": "object", "properties": {
    "templateID": {"type": "string"}, "timeout": {"type": "integer"}, "autoPause": BOOLEAN, "secure": BOOLEAN,
    "allow_internet_access": BOOLEAN, "metadata": {"type": "object"}, "envVars": {"type": "object"},
    "autoResume": {"type": "object", "properties": {"enabled": BOOLEAN}}}})


class SandboxesHandler(ControlHandler):
    """``/sandboxes`` (v1: list shows running sandboxes, create takes ``secure``) and ``/v2/sandboxes``."""

    def initialize(self, version: int = 1, **deps: Any) -> None:  # type: ignore[override]
        super().initialize(**deps)
        self.version = version

    async def post(self) -> None:
        body = self.json_body(CREATE_BODY, allow_empty=True)
        template = body.get("templateID")
        if not isinstance(template, str) or not template:
            raise InvalidRequest("field 'templateID' is required: the template name, e.g. code-interpreter-v1")
        refuse_unsupported(body)
        image = self.templates.image_for(template)
        timeout = self.seconds(body, "timeout")
        auto_resume = body.get("autoResume", {}).get("enabled")
        resources: dict[str, Any] = {}
        if body.get("allow_internet_access"):
            resources["network"] = True  # (refused with 403 unless the operator allows network access)
        sandbox = await self.sandboxes.create(
            self.user, resources=resources, env=check_env(body.get("envVars"), "envVars"),
            metadata=string_map(body, "metadata"),
            lifetime=300 if timeout is None else timeout, auto_resume=auto_resume, image=image, template=template,
        )
        self.write_json(created_body(sandbox), status=201)

    async def get(self) -> None:
        wanted_states = ["running"] if self.version == 1 else self.states()
        metadata = self.metadata_filter()
        template = self.get_argument("template", None)
        started_after = self.started_after()
        chosen = [
            s for s in await self.sandboxes.list_sandboxes(self.user)
            if e2b_state(s) in wanted_states
            and all(str(s.metadata.get(k)) == v for k, v in metadata.items())
            and (template is None or s.template == template)
            and (started_after is None or s.created_at >= started_after)
        ]
        chosen.sort(key=lambda s: s.created_at, reverse=self.get_argument("order", "desc") != "asc")
        if self.version == 1:
            self.write_json([listed_body(s) for s in chosen])
            return
        start, limit = self.page()
        page = chosen[start:start + limit]
        if start + limit < len(chosen):
            self.set_header("X-Next-Token", str(start + limit))
        self.set_header("X-Total-Running", str(sum(1 for s in chosen if e2b_state(s) == "running")))
        self.write_json([listed_body(s) for s in page])

    def states(self) -> list[str]:
        states = [part for value in self.get_arguments("state") for part in value.split(",") if part]
        unknown = sorted(set(states) - {"running", "paused"})
        if unknown:
            raise InvalidRequest(f"unknown state {', '.join(unknown)}: the states are running and paused")
        return states or ["running", "paused"]

    def metadata_filter(self) -> dict[str, str]:
        """E2B sends ``metadata=k%3Dv%26k2%3Dv2``: one parameter, itself URL-encoded pairs of encoded parts."""
        query = self.get_argument("metadata", "")
        return {urllib.parse.unquote(k): urllib.parse.unquote(v)
                for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)}

    def started_after(self) -> datetime | None:
        value = self.get_argument("startedAfter", None)
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(f"startedAfter {value!r} is not an RFC 3339 time") from None

    def page(self) -> tuple[int, int]:
        try:
            limit = int(self.get_argument("limit", str(MAX_PAGE)))
            start = int(self.get_argument("nextToken", "0") or "0")
        except ValueError:
            raise InvalidRequest("'limit' must be an integer and 'nextToken' one this gateway gave") from None
        if not 0 < limit <= MAX_PAGE or start < 0:
            raise InvalidRequest(f"'limit' must be 1..{MAX_PAGE}")
        return start, limit


class SandboxHandler(ControlHandler):
    async def get(self, sandbox_id: str) -> None:
        self.write_json(detail_body(await self.owned(sandbox_id)))

    async def delete(self, sandbox_id: str) -> None:
        await self.owned(sandbox_id)
        await self.sandboxes.terminate(sandbox_id, self.user)
        self.set_status(204)
        self.finish()


class TimeoutHandler(ControlHandler):
    """``set_timeout``: the sandbox ends ``timeout`` seconds from now (our ``PATCH`` of ``lifetime``)."""

    async def post(self, sandbox_id: str) -> None:
        timeout = self.seconds(self.body(), "timeout")
        if timeout is None:
            raise InvalidRequest("field 'timeout' is required")
        await self.owned(sandbox_id)
        await self.sandboxes.update(sandbox_id, self.user, lifetime=timeout)
        self.set_status(204)
        self.finish()


class PauseHandler(ControlHandler):
    async def post(self, sandbox_id: str) -> None:
        sandbox = await self.owned(sandbox_id)
        if sandbox.status == SandboxStatus.PAUSED:
            self.set_status(409)
            self.finish({"code": 409, "message": f"sandbox {sandbox_id} is already paused"})
            return
        await self.sandboxes.pause(sandbox_id, self.user)
        self.set_status(204)
        self.finish()


class ResumeHandler(ControlHandler):
    """v1 resume: 201 with the sandbox; 409 if it is not paused."""

    async def post(self, sandbox_id: str) -> None:
        body = self.body()
        sandbox = await self.owned(sandbox_id)
        if sandbox.status != SandboxStatus.PAUSED:
            self.set_status(409)
            self.finish({"code": 409, "message": f"sandbox {sandbox_id} is not paused"})
            return
        sandbox = await self.sandboxes.resume(sandbox_id, self.user)
        timeout = self.seconds(body, "timeout")
        if timeout is not None:
            sandbox = await self.sandboxes.update(sandbox_id, self.user, lifetime=timeout)
        self.write_json(created_body(sandbox), status=201)


class ConnectHandler(ControlHandler):
    """``connect``: a paused sandbox is resumed (201), a running one answered as it is (200); the
    timeout only ever extends the sandbox's life."""

    async def post(self, sandbox_id: str) -> None:
        body = self.body()
        if body.get("memory") is False:
            raise NotSupported("on_resume='reboot' (resuming without the saved variables)")
        timeout = self.seconds(body, "timeout")
        sandbox = await self.owned(sandbox_id)
        status = 200
        if sandbox.status == SandboxStatus.PAUSED:
            sandbox = await self.sandboxes.resume(sandbox_id, self.user)
            status = 201
        if timeout is not None:
            wanted = time.time() + timeout
            if sandbox.expires_at is None or sandbox.expires_at.timestamp() < wanted:
                sandbox = await self.sandboxes.update(sandbox_id, self.user, lifetime=timeout)
        self.write_json(created_body(sandbox), status=status)


class SandboxMetricsHandler(ControlHandler):
    """``get_metrics``: one sample, now (E2B keeps a series; we measure on request)."""

    async def get(self, sandbox_id: str) -> None:
        await self.owned(sandbox_id)
        usage = await self.sandboxes.usage(sandbox_id, self.user)
        sandbox = await self.owned(sandbox_id)
        now = timestamps.now()
        self.write_json([{
            "timestamp": timestamps.to_iso(now),
            "timestampUnix": int(now.timestamp()),
            "cpuCount": cpu_count(sandbox),
            "cpuUsedPct": cpu_percent(sandbox, usage),
            "memUsed": memory_used(usage),
            "memTotal": usage["memory"]["limit_bytes"],
            "memCache": 0,
            "diskUsed": disk_used(usage),
            "diskTotal": usage["disk"]["limit_bytes"],
        }])
