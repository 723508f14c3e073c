"""``code-gateway-client mcp``: the sandbox tools as an MCP server over stdio, for desktop agent hosts.

    {"mcpServers": {"code-gateway": {"command": "code-gateway-client", "args": ["mcp"],
                    "env": {"CODE_GATEWAY_URL": "http://127.0.0.1:8888", "CODE_GATEWAY_API_KEY": "..."}}}}

One process is one session: its own sandbox is made on the first call that names none and,
with every sandbox made through ``create_sandbox``, deleted when the session ends (the host
closes the pipe). ``--sandbox ID`` uses an existing sandbox instead (and leaves it be). The same
tools are served by the gateway itself at ``/mcp`` over streamable HTTP.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import BlobResourceContents, CallToolResult, ContentBlock, EmbeddedResource, ImageContent, TextContent

from code_gateway_client import __version__
from code_gateway_client.aio import AsyncGateway, AsyncSandbox
from code_gateway_client.errors import APIError
from code_gateway_client.tools import describe

IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
SANDBOX_ARG = "the sandbox id; default: this session's own sandbox (made on first use, deleted when it ends)"


class Session:
    """This process's gateway connection and the sandboxes it made."""

    def __init__(self, gateway: AsyncGateway, sandbox_id: str | None) -> None:
        self.gateway = gateway
        self.fixed = sandbox_id
        self.own: AsyncSandbox | None = None
        self.made: list[AsyncSandbox] = []

    async def sandbox(self, sandbox_id: str | None) -> tuple[AsyncSandbox, str]:
        """The sandbox a call names (or the session's own, made now if needed) and a note if it is new."""
        if sandbox_id or self.fixed:
            return await self.gateway.sandbox(sandbox_id or self.fixed or ""), ""
        if self.own is not None and (await self.own.refresh()).status != "terminated":
            return self.own, ""
        self.own = await self.create({})
        return self.own, f"[new sandbox {self.own.id}: it is this session's sandbox]"

    async def create(self, metadata: dict[str, str]) -> AsyncSandbox:
        sandbox = await self.gateway.create_sandbox(metadata={"mcp_session": "stdio", **metadata})
        self.made.append(sandbox)
        return sandbox

    async def close(self) -> None:
        for sandbox in self.made:
            with contextlib.suppress(APIError):
                await sandbox.delete()
        await self.gateway.aclose()


def session_of(ctx: Context) -> Session:
    session = ctx.request_context.lifespan_context
    assert isinstance(session, Session)
    return session


def text(value: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value)])


@contextlib.asynccontextmanager
async def refusals() -> AsyncIterator[None]:
    """A gateway refusal becomes a tool error naming its code (the model can read it)."""
    try:
        yield
    except APIError as error:
        raise ToolError(f"{error.code}: {error.message}") from None


def build(url: str | None, api_key: str | None, *, sandbox_id: str | None = None) -> MCPServer[Session]:
    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Session]) -> AsyncIterator[Session]:
        session = Session(AsyncGateway(url, api_key), sandbox_id)
        try:
            yield session
        finally:
            await session.close()

    server: MCPServer[Session] = MCPServer(
        "code-gateway", version=__version__, lifespan=lifespan,
        instructions="Run Python in stateful, isolated Jupyter sandboxes: variables, imports and files persist "
                     "between run_code calls in the same sandbox.")

    @server.tool(description="Run Python code in a stateful Jupyter sandbox (variables, imports and files persist "
                             "between calls). Returns stdout/stderr, the last expression's value, errors with "
                             "tracebacks, DataFrames as CSV text, and each plot as an image. "
                             f"sandbox: {SANDBOX_ARG}.")
    async def run_code(code: str, ctx: Context, timeout: float | None = None,
                       sandbox: str | None = None) -> CallToolResult:
        async with refusals():
            target, note = await session_of(ctx).sandbox(sandbox)
            execution = await target.run(code, timeout=timeout)
        content: list[ContentBlock] = [TextContent(type="text", text="\n".join(filter(None, [note, describe(execution)])))]
        content += [ImageContent(type="image", data=base64.b64encode(image.data).decode(), mime_type=image.mime)
                    for image in execution.images() if image.mime in ("image/png", "image/jpeg")]
        return CallToolResult(content=content, is_error=not execution.ok)

    @server.tool(description="Create a new sandbox and return it as JSON (pass its id as `sandbox` to the "
                             "other tools). It is deleted when this session ends.")
    async def create_sandbox(ctx: Context, metadata: dict[str, str] | None = None) -> CallToolResult:
        async with refusals():
            sandbox = await session_of(ctx).create(metadata or {})
        return text(json.dumps(sandbox.info.raw))

    @server.tool(description="List your sandboxes that are not terminated: id, status, created_at, metadata.")
    async def list_sandboxes(ctx: Context) -> CallToolResult:
        async with refusals():
            listed = await session_of(ctx).gateway.sandboxes()
        rows = [{k: s.info.raw.get(k) for k in ("id", "status", "created_at", "execution_count", "metadata")}
                for s in listed if s.info.status != "terminated"]
        return text(json.dumps(rows))

    @server.tool(description="Delete a sandbox: its kernel, container and files.")
    async def delete_sandbox(sandbox: str, ctx: Context) -> CallToolResult:
        async with refusals():
            await (await session_of(ctx).gateway.sandbox(sandbox)).delete()
        return text(f"deleted {sandbox}")

    @server.tool(description="Write a file into the sandbox's working directory (parent directories are made). "
                             f"content is text, or base64 when encoding is 'base64'. sandbox: {SANDBOX_ARG}.")
    async def upload_file(path: str, content: str, ctx: Context, encoding: str = "text",
                          sandbox: str | None = None) -> CallToolResult:
        if encoding not in ("text", "base64"):
            raise ToolError("invalid_request: encoding must be 'text' or 'base64'")
        try:
            data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
        except binascii.Error:
            raise ToolError("invalid_request: content is not valid base64") from None
        async with refusals():
            target, note = await session_of(ctx).sandbox(sandbox)
            entry = await target.files.upload(path, data)
        return text("\n".join(filter(None, [note, f"wrote {entry.size} bytes to {entry.path}"])))

    @server.tool(description="Read a file from the sandbox's working directory: text as text, PNG/JPEG/GIF as "
                             f"an image, other bytes as a base64 resource. sandbox: {SANDBOX_ARG}.")
    async def download_file(path: str, ctx: Context, sandbox: str | None = None) -> CallToolResult:
        async with refusals():
            target, _ = await session_of(ctx).sandbox(sandbox)
            data = await target.files.download(path)
        return CallToolResult(content=[file_block(target.id, path, data)])

    @server.tool(description=f"List a directory of the sandbox's working directory. sandbox: {SANDBOX_ARG}.")
    async def list_files(ctx: Context, path: str = "", sandbox: str | None = None) -> CallToolResult:
        async with refusals():
            target, _ = await session_of(ctx).sandbox(sandbox)
            entries = await target.files.list(path)
        return text("\n".join(f"{e.type:<9} {e.size:>12} {e.path}" for e in entries) or "(empty directory)")

    @server.tool(description=f"The sandbox's history as a Jupyter notebook (.ipynb JSON). sandbox: {SANDBOX_ARG}.")
    async def export_notebook(ctx: Context, sandbox: str | None = None) -> CallToolResult:
        async with refusals():
            target, _ = await session_of(ctx).sandbox(sandbox)
            notebook = await target.connection.json("GET", f"{target.path}/notebook")
        return text(json.dumps(notebook, indent=1))

    return server


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


def serve(url: str | None, api_key: str | None, *, sandbox_id: str | None = None) -> None:
    build(url, api_key, sandbox_id=sandbox_id).run("stdio")
