"""A sandbox's contexts: its kernels, one per context (its own is the default, python).

    POST   /api/v1/sandboxes/{id}/contexts                  {"language": "bash", "cwd": "data"} -> 201
    GET    /api/v1/sandboxes/{id}/contexts                  {"contexts": [...]}
    POST   /api/v1/sandboxes/{id}/contexts/{ctx}/restart    a fresh kernel in it
    DELETE /api/v1/sandboxes/{id}/contexts/{ctx}            204

``"context"`` (an id) or ``"language"`` on execute picks the kernel that runs the code.
"""

from __future__ import annotations

from gateway.api import schemas
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.sandboxes.files import check_path


class ContextsHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str) -> None:
        body = self.json_body(schemas.create_context, allow_empty=True)
        cwd = check_path(body.get("cwd", ""), allow_root=True)
        context = await self.sandboxes.create_context(sandbox_id, self.user, body.get("language"), cwd)
        self.set_header("Location", f"/api/v1/sandboxes/{sandbox_id}/contexts/{context['id']}")
        self.write_json(context, status=201)

    async def get(self, sandbox_id: str) -> None:
        self.write_json({"contexts": await self.sandboxes.list_contexts(sandbox_id, self.user)})


class ContextHandler(SandboxAPIHandler):
    async def delete(self, sandbox_id: str, context_id: str) -> None:
        await self.sandboxes.remove_context(sandbox_id, self.user, context_id)
        self.set_status(204)
        self.finish()


class ContextRestartHandler(SandboxAPIHandler):
    async def post(self, sandbox_id: str, context_id: str) -> None:
        self.write_json(await self.sandboxes.restart_context(sandbox_id, self.user, context_id))
