"""A sandbox's history as a notebook: ``GET /api/v1/sandboxes/{id}/notebook`` -> ``.ipynb``.

Works for running and ended sandboxes alike (the history is stored); the response is an
attachment named ``sandbox-<id>.ipynb`` of type ``application/x-ipynb+json``.
"""

from __future__ import annotations

import json

from gateway import timestamps
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.execution.notebook import NOTEBOOK_MEDIA_TYPE, history_notebook, notebook_filename


class NotebookHandler(SandboxAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        sandbox = await self.sandboxes.get(sandbox_id, self.user)
        self.sandboxes.touch(sandbox.id)
        executions = await self.sandboxes.list_executions(sandbox_id, self.user)
        document = history_notebook(sandbox.id, executions, created_at=timestamps.to_iso(sandbox.created_at))
        self.set_header("Content-Type", f"{NOTEBOOK_MEDIA_TYPE}; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="{notebook_filename(sandbox.id)}"')
        self.finish(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
