"""A sandbox's history as a notebook: ``GET /api/v1/sandboxes/{id}/notebook`` -> ``.ipynb``.

Works for running and ended sandboxes alike (the history is stored); the response is an
attachment named ``sandbox-<id>.ipynb`` of type ``application/x-ipynb+json``, streamed from the
store a few executions at a time.
"""

from __future__ import annotations

from gateway import timestamps
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.execution.notebook import NOTEBOOK_MEDIA_TYPE, history_notebook_text, notebook_filename


class NotebookHandler(SandboxAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        sandbox = await self.sandboxes.get(sandbox_id, self.user)
        self.sandboxes.touch(sandbox.id)
        self.set_header("Content-Type", f"{NOTEBOOK_MEDIA_TYPE}; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="{notebook_filename(sandbox.id)}"')
        executions = self.sandboxes.iter_executions(sandbox_id, self.user)
        created_at = timestamps.to_iso(sandbox.created_at)
        async for text in history_notebook_text(sandbox.id, executions, created_at=created_at):
            self.write(text)
            await self.flush()  # the client's pace: at most one cell waits for it
        self.finish()
