"""``code-gateway-client mcp``: the gateway's MCP tools over stdio, for desktop agent hosts.

    {"mcpServers": {"code-gateway": {"command": "code-gateway-client", "args": ["mcp"],
                    "env": {"CODE_GATEWAY_URL": "http://127.0.0.1:8888", "CODE_GATEWAY_API_KEY": "..."}}}}

A bridge, with the official MCP SDK on both sides: it serves stdio to the host and is a client of
the gateway's own MCP server (streamable HTTP at ``/mcp``, Bearer key), so both transports have
exactly the same tools. One process is one MCP session at the gateway: its own sandbox is made on
the first call that names none and, with every sandbox made through ``create_sandbox``, deleted
when the session ends (the host closes the pipe; the bridge then ends its gateway session).
``--sandbox ID`` makes calls that name no sandbox use that one instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams, TextContent

from code_gateway_client import __version__
from code_gateway_client.connection import resolve

#: Tools that take no ``sandbox`` to default (``delete_sandbox`` must name its own).
UNSCOPED = frozenset({"create_sandbox", "list_sandboxes", "delete_sandbox"})


def build(url: str | None, api_key: str | None, *, sandbox_id: str | None = None) -> Server[Client]:
    base, key = resolve(url, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(_: Server[Client]) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None)) as http:
            # httpx2 is the HTTP client the MCP SDK is built on. The initialize handshake (legacy
            # mode) opens a gateway session, which owns the sandboxes made for this one.
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy") as gateway:
                yield gateway

    async def list_tools(ctx: ServerRequestContext[Client], params: PaginatedRequestParams | None) -> ListToolsResult:
        return await ctx.lifespan_context.list_tools(cursor=params.cursor if params else None)

    async def call_tool(ctx: ServerRequestContext[Client], params: CallToolRequestParams) -> CallToolResult:
        arguments: dict[str, Any] = dict(params.arguments or {})
        if sandbox_id and params.name not in UNSCOPED and "sandbox" not in arguments:
            arguments["sandbox"] = sandbox_id
        try:
            return await ctx.lifespan_context.call_tool(params.name, arguments)
        except (httpx2.HTTPError, anyio.BrokenResourceError) as error:
            return CallToolResult(content=[TextContent(type="text", text=f"gateway_unreachable: {error}")],
                                  is_error=True)

    return Server("code-gateway", version=__version__, lifespan=lifespan, on_list_tools=list_tools,
                  on_call_tool=call_tool,
                  instructions="Run Python in stateful, isolated Jupyter sandboxes: variables, imports and files "
                               "persist between run_code calls in the same sandbox.")


async def run(url: str | None, api_key: str | None, *, sandbox_id: str | None = None) -> None:
    server = build(url, api_key, sandbox_id=sandbox_id)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve(url: str | None, api_key: str | None, *, sandbox_id: str | None = None) -> None:
    anyio.run(lambda: run(url, api_key, sandbox_id=sandbox_id))
