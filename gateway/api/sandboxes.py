"""Sandbox resources: create, list, show, change (PATCH), delete, interrupt, restart, pause, resume, metrics."""

from __future__ import annotations

from typing import Any

from gateway.api import schemas
from gateway.api.base import APIHandler
from gateway.api.forwarding import HolderRouting
from gateway.errors import InvalidRequest
from gateway.execution.notebook import run_seed, seed_cells
from gateway.sandboxes.inputs import check_code, check_env
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import SandboxStatus

#: What ``GET /sandboxes?status=`` may ask for (repeated: any of them).
STATUSES = [str(status) for status in SandboxStatus]


class SandboxAPIHandler(HolderRouting, APIHandler):
    """A handler over the sandbox manager; a request for one sandbox (the route's first group) that
    another replica holds is forwarded to it (``gateway.api.forwarding``)."""

    def initialize(self, sandboxes: SandboxManager, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.sandboxes = sandboxes


def creation_limits(body: dict[str, Any]) -> dict[str, Any]:
    """The requested limits: ``resources``, plus the ``timeout``/``network`` shorthands at top level."""
    resources = dict(body.get("resources") or {})
    for field in ("timeout", "network"):
        if field in body:
            if field in resources:
                raise InvalidRequest(f"field '{field}' is given twice (at the top and in 'resources'): give it once")
            resources[field] = body[field]
    return resources


def lifetime_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The lifetime fields a body gives (``lifetime``, ``idle_timeout``, ``on_idle``, ``auto_resume``)."""
    return {field: body[field] for field in schemas.LIFETIME if field in body}


class SandboxesHandler(SandboxAPIHandler):
    async def post(self) -> None:
        body = self.json_body(schemas.create_sandbox, allow_empty=True)
        # A bad seed notebook, or a cell of it no execution can take, is refused before anything starts.
        seed = None if "notebook" not in body else [
            (index, check_code(code, f"notebook.cells.{index}.source")) for index, code in seed_cells(body["notebook"])]
        sandbox = await self.sandboxes.create(
            self.user, resources=creation_limits(body), env=check_env(body.get("env")), metadata=body.get("metadata"),
            figure_formats=body.get("figure_formats"), isolation=body.get("isolation"), **lifetime_fields(body),
        )
        report = None
        if seed is not None:
            # Seed cells are ordinary executions (in the history); the first failure stops the rest.
            report = await run_seed(seed, lambda code: self.sandboxes.execute(sandbox.id, self.user, code))
        created = sandbox.to_public()
        if report is not None:
            created["seed"] = report
        self.set_header("Location", f"/api/v1/sandboxes/{sandbox.id}")
        self.write_json(created, status=201)

    async def get(self) -> None:
        statuses = self.get_arguments("status")
        unknown = [status for status in statuses if status not in STATUSES]
        if unknown:  # else a typo would list nothing, as if there were no such sandboxes
            raise InvalidRequest(f"query parameter 'status' must be one of {', '.join(STATUSES)}; got {unknown[0]!r}")
        limit, offset = self.paging()
        sandboxes = await self.sandboxes.list_sandboxes(self.user, statuses=statuses or None, limit=limit,
                                                        offset=offset)
        total = await self.sandboxes.count_sandboxes(self.user, statuses=statuses or None)
        self.write_json({"sandboxes": [s.to_public() for s in sandboxes], "total": total, "limit": limit,
                         "offset": offset})


class SandboxHandler(SandboxAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        self.write_json((await self.sandboxes.get(sandbox_id, self.user)).to_public())

    async def patch(self, sandbox_id: str) -> None:
        body = self.json_body(schemas.update_sandbox)
        sandbox = await self.sandboxes.update(sandbox_id, self.user, metadata=body.get("metadata"),
                                              **lifetime_fields(body))
        self.write_json(sandbox.to_public())

    async def delete(self, sandbox_id: str) -> None:
        await self.sandboxes.terminate(sandbox_id, self.user)
        self.set_status(204)
        self.finish()


class InterruptHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str) -> None:
        self.write_json((await self.sandboxes.interrupt(sandbox_id, self.user)).to_public())


class RestartHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str) -> None:
        self.write_json((await self.sandboxes.restart(sandbox_id, self.user)).to_public())


class PauseHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str) -> None:
        self.write_json((await self.sandboxes.pause(sandbox_id, self.user)).to_public())


class ResumeHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str) -> None:
        self.write_json((await self.sandboxes.resume(sandbox_id, self.user)).to_public())


class SandboxMetricsHandler(SandboxAPIHandler):
    """``GET …/metrics``: what the sandbox uses now (its cgroup, or a local kernel's process tree)."""

    async def get(self, sandbox_id: str) -> None:
        self.write_json(await self.sandboxes.usage(sandbox_id, self.user))


class UsageHandler(SandboxAPIHandler):
    """``GET /api/v1/usage``: the caller's use of each quota beside its limit."""

    async def get(self) -> None:
        self.write_json(await self.sandboxes.quotas.usage(self.user))
