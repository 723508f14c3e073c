"""The MCP tools, run over the gateway's managers for the key that called them.

    service = McpService(sandboxes=manager, files=files)
    await service.start()                                  # the MCP SDK's session manager runs
    await service.handle(scope, receive, send)             # one HTTP request, as ASGI (see gateway/api/mcp.py)
    await service.stop()                                   # every session's sandboxes deleted

Tools: ``run_code`` (text, an image block per PNG/JPEG, tables as CSV text), ``create_sandbox``,
``list_sandboxes``, ``delete_sandbox``, ``upload_file``, ``download_file``, ``list_files``,
``export_notebook``. A tool that names no ``sandbox`` uses the session's own (see sessions.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
)
from starlette.types import Receive, Scope, Send

from gateway import __version__, timestamps
from gateway.errors import GatewayError
from gateway.execution.notebook import history_notebook
from gateway.mcp.content import execution_content
from gateway.mcp.sessions import McpSessions
from gateway.sandboxes.files import SandboxFiles
from gateway.sandboxes.inputs import check_code
from gateway.sandboxes.manager import SandboxManager
from gateway.tasks import wait_tasks

SESSION_HEADER = "mcp-session-id"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
MAX_DOWNLOAD = 10 << 20
SANDBOX_ARG = ("the sandbox id; default: this session's own sandbox (made on first use, deleted when the "
               "session ends)")


def caller(ctx: Context) -> tuple[str, str | None]:
    """The gateway user of this request (authenticated by gateway/api/mcp.py) and its MCP session, if any."""
    request = ctx.request_context.request
    if request is None:
        raise ToolError("internal_error: this server serves MCP over HTTP only")
    return request.scope["user"].username, request.headers.get(SESSION_HEADER)


def text(value: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value)])


class McpService:
    def __init__(self, *, sandboxes: SandboxManager, files: SandboxFiles, idle_timeout: float = 1800.0) -> None:
        self.sandboxes = sandboxes
        self.files = files
        self.sessions = McpSessions(sandboxes, idle_timeout)
        self.server: MCPServer[Any] = MCPServer(
            "code-gateway", version=__version__,
            instructions="Run Python in stateful, isolated Jupyter sandboxes: variables, imports and files "
                         "persist between run_code calls in the same sandbox.")
        self.add_tools()
        # Bearer keys authenticate every request, so DNS rebinding gains an attacker nothing; and the
        # gateway serves any host name it is deployed under.
        self.server.streamable_http_app(
            session_idle_timeout=idle_timeout,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self.manager: StreamableHTTPSessionManager = self.server.session_manager
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the SDK's session manager in a task of ours (its task group must start and end in one task)."""
        running = asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                running.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run(), name="mcp-sessions")
        await running.wait()
        self.sessions.start()

    async def stop(self) -> None:
        await self.sessions.stop()
        self._stop.set()
        if self._task is not None:
            await wait_tasks([self._task], within=10.0, what="MCP server")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)

    async def sandbox_for(self, ctx: Context, sandbox: str | None) -> tuple[str, str, str]:
        """(user, sandbox id, a note for the model when a new sandbox was made for it)."""
        user, session = caller(ctx)
        if sandbox:
            return user, sandbox, ""
        sandbox_id, new = await self.sessions.default_sandbox(session, user)
        if not new:
            return user, sandbox_id, ""
        keep = "it is this session's sandbox" if session else "pass it as `sandbox` to keep using it"
        return user, sandbox_id, f"[new sandbox {sandbox_id}: {keep}]"

    def add_tools(self) -> None:  # noqa: C901 (one closure per tool, each short)
        tool = self.server.tool

        @tool(description="Run Python code in a stateful Jupyter sandbox (variables, imports and files persist "
                          "between calls). Returns stdout/stderr, the last expression's value, errors with "
                          "tracebacks, DataFrames as CSV text, and each plot as an image (matplotlib shows "
                          f"figures by itself). sandbox: {SANDBOX_ARG}.")
        async def run_code(code: str, ctx: Context, timeout: float | None = None,
                           sandbox: str | None = None) -> CallToolResult:
            async with refusals():
                check_code(code)  # (before a session's sandbox is made for it)
                user, sandbox_id, note = await self.sandbox_for(ctx, sandbox)
                execution = await self.sandboxes.execute(sandbox_id, user, code, timeout=timeout)
            public = execution.to_public()
            return CallToolResult(content=execution_content(public, sandbox_note=note),
                                  is_error=public["status"] != "completed")

        @tool(description="Create a new sandbox and return its id (pass it as `sandbox` to the other tools). "
                          "Sandboxes made in an MCP session are deleted when the session ends.")
        async def create_sandbox(ctx: Context, metadata: dict[str, str] | None = None) -> CallToolResult:
            user, session = caller(ctx)
            async with refusals():
                sandbox_id = await self.sessions.create(session, user, metadata)
            return text(json.dumps((await self.sandboxes.get(sandbox_id, user)).to_public()))

        @tool(description="List your sandboxes that are not terminated: id, status, created_at, metadata.")
        async def list_sandboxes(ctx: Context) -> CallToolResult:
            user, _ = caller(ctx)
            listed = await self.sandboxes.list_sandboxes(user)
            rows = [{k: s.to_public().get(k) for k in ("id", "status", "created_at", "execution_count", "metadata")}
                    for s in listed if s.status != "terminated"]
            return text(json.dumps(rows))

        @tool(description="Delete a sandbox: its kernel, container and files.")
        async def delete_sandbox(sandbox: str, ctx: Context) -> CallToolResult:
            user, _ = caller(ctx)
            async with refusals():
                await self.sandboxes.terminate(sandbox, user)
            return text(f"deleted {sandbox}")

        @tool(description="Write a file into the sandbox's working directory (parent directories are made). "
                          "content is text, or base64 when encoding is 'base64'. " f"sandbox: {SANDBOX_ARG}.")
        async def upload_file(path: str, content: str, ctx: Context, encoding: str = "text",
                              sandbox: str | None = None) -> CallToolResult:
            if encoding not in ("text", "base64"):
                raise ToolError("invalid_request: encoding must be 'text' or 'base64'")
            try:
                data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
            except binascii.Error:
                raise ToolError("invalid_request: content is not valid base64") from None
            async with refusals():
                user, sandbox_id, note = await self.sandbox_for(ctx, sandbox)
                upload = await self.files.open_upload(sandbox_id, user, path)
                try:
                    await upload.write(data)
                except BaseException:
                    self.files.abandon(upload)
                    raise
                entry = await upload.finish()
            return text("\n".join(filter(None, [note, f"wrote {entry['size']} bytes to {entry['path']}"])))

        @tool(description="Read a file from the sandbox's working directory: text as text, PNG/JPEG/GIF as an "
                          f"image, other bytes as a base64 resource. sandbox: {SANDBOX_ARG}.")
        async def download_file(path: str, ctx: Context, sandbox: str | None = None) -> CallToolResult:
            async with refusals():
                user, sandbox_id, _ = await self.sandbox_for(ctx, sandbox)
                download = await self.files.open_download(sandbox_id, user, path)
                try:
                    if download.size > MAX_DOWNLOAD:
                        raise ToolError(f"file_too_large: {path} is {download.size} bytes; over MCP at most "
                                        f"{MAX_DOWNLOAD} are returned (use the files API)")
                    data = b"".join([chunk async for chunk in download.chunks()])
                finally:
                    await download.close()
            return CallToolResult(content=[file_block(sandbox_id, path, data)])

        @tool(description=f"List a directory of the sandbox's working directory (default: its top). sandbox: "
                          f"{SANDBOX_ARG}.")
        async def list_files(ctx: Context, path: str = "", sandbox: str | None = None) -> CallToolResult:
            async with refusals():
                user, sandbox_id, _ = await self.sandbox_for(ctx, sandbox)
                listing = await self.files.list(sandbox_id, user, path)
            lines = [f"{e['type']:<9} {e['size']:>12} {e['path']}" for e in listing["entries"]]
            return text("\n".join(lines) or "(empty directory)")

        @tool(description=f"The sandbox's history of executions as a Jupyter notebook (.ipynb JSON). sandbox: "
                          f"{SANDBOX_ARG}.")
        async def export_notebook(ctx: Context, sandbox: str | None = None) -> CallToolResult:
            async with refusals():
                user, sandbox_id, _ = await self.sandbox_for(ctx, sandbox)
                record = await self.sandboxes.get(sandbox_id, user)
                executions = await self.sandboxes.list_executions(sandbox_id, user)
            notebook = history_notebook(sandbox_id, executions, created_at=timestamps.to_iso(record.created_at))
            return text(json.dumps(notebook, indent=1))


def file_block(sandbox_id: str, path: str, data: bytes) -> ContentBlock:
    mime = next((m for suffix, m in IMAGE_SUFFIXES.items() if path.lower().endswith(suffix)), None)
    if mime is not None:
        return ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime)
    try:
        return TextContent(type="text", text=data.decode())
    except UnicodeDecodeError:
        return EmbeddedResource(type="resource", resource=BlobResourceContents(
            uri=f"sandbox://{sandbox_id}/{path}", blob=base64.b64encode(data).decode(),
            mime_type="application/octet-stream"))


class refusals:
    """A gateway refusal inside a tool becomes a tool error naming its code (the model can read it)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, GatewayError):
            raise ToolError(f"{exc.code}: {exc.message}") from None
