"""The MCP server both ways, driven by the official MCP SDK's own client against a real Docker gateway:
streamable HTTP at the gateway's ``/mcp`` (Bearer key) and ``code-gateway-client mcp`` over stdio."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import matplotlib.image
import nbformat
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.gateways import KEYS, GatewayProcess, auth
from tests.waiting import until

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('plotted')"
FRAME = "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', None]})"
CLI = str(Path(sys.executable).parent / "code-gateway-client")
pytestmark = pytest.mark.docker


@asynccontextmanager
async def http_client(gateway: GatewayProcess, mode: str = "legacy", user: str = "alice") -> AsyncIterator[Client]:
    http = httpx.AsyncClient(headers=auth(user), timeout=120)
    async with http, Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http), mode=mode) as client:
        yield client


def texts(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def decoded_png(result: Any) -> Any:
    [image] = [c for c in result.content if c.type == "image"]
    assert image.mime_type == "image/png"
    data = base64.b64decode(image.data)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return matplotlib.image.imread(io.BytesIO(data), format="png")  # a real, decodable PNG


async def sandbox_status(gateway: GatewayProcess, sandbox_id: str) -> str:
    async with gateway.client("alice") as rest:
        return str((await rest.get(f"/api/v1/sandboxes/{sandbox_id}")).json()["status"])


def new_sandbox_id(result: Any) -> str:
    first = texts(result).splitlines()[0]
    assert first.startswith("[new sandbox "), first
    return first.split()[2].rstrip(":")


async def exercise(client: Client) -> str:
    """The tools every transport serves, in one session; the id of the session's own sandbox."""
    names = {tool.name for tool in (await client.list_tools()).tools}
    assert names >= {"run_code", "create_sandbox", "list_sandboxes", "delete_sandbox", "upload_file",
                     "download_file", "list_files", "export_notebook"}
    first = await client.call_tool("run_code", {"code": "x = 41\nprint('hi')"})
    sandbox_id = new_sandbox_id(first)
    assert not first.is_error and "hi" in texts(first)
    second = await client.call_tool("run_code", {"code": "x + 1"})
    assert texts(second) == "42"  # the same sandbox: the session's own
    plot = await client.call_tool("run_code", {"code": PLOT})
    assert decoded_png(plot).ndim == 3 and "plotted" in texts(plot)
    table = await client.call_tool("run_code", {"code": FRAME})
    assert ",a,b\n0,1,x\n1,2," in texts(table)
    failed = await client.call_tool("run_code", {"code": "1 / 0"})
    assert failed.is_error and "ZeroDivisionError" in texts(failed) and "\x1b[" not in texts(failed)

    await client.call_tool("upload_file", {"path": "d/note.txt", "content": "hello"})
    await client.call_tool("upload_file", {"path": "d/blob.bin", "content": base64.b64encode(b"\xff\xfe\0").decode(),
                                           "encoding": "base64"})
    assert "d/note.txt" in texts(await client.call_tool("list_files", {"path": "d"}))
    assert texts(await client.call_tool("download_file", {"path": "d/note.txt"})) == "hello"
    [blob] = (await client.call_tool("download_file", {"path": "d/blob.bin"})).content
    assert blob.type == "resource" and base64.b64decode(blob.resource.blob) == b"\xff\xfe\0"
    missing = await client.call_tool("download_file", {"path": "nope"})
    assert missing.is_error and "file_not_found" in texts(missing)
    await client.call_tool("run_code", {"code": "plt.figure(); plt.plot([1]); plt.savefig('p.png')"})
    decoded_png(await client.call_tool("download_file", {"path": "p.png"}))

    notebook = nbformat.reads(texts(await client.call_tool("export_notebook", {})), as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].source == "x = 41\nprint('hi')"

    made = json.loads(texts(await client.call_tool("create_sandbox", {"metadata": {"purpose": "test"}})))
    listed = json.loads(texts(await client.call_tool("list_sandboxes", {})))
    assert {made["id"], sandbox_id} <= {s["id"] for s in listed}
    assert texts(await client.call_tool("run_code", {"code": "'other'", "sandbox": made["id"]})) == "'other'"
    other = await client.call_tool("run_code", {"code": "x", "sandbox": made["id"]})
    assert other.is_error and "NameError" in texts(other)  # a sandbox of its own
    gone = await client.call_tool("run_code", {"code": "1", "sandbox": "0000dead"})
    assert gone.is_error and "sandbox_not_found" in texts(gone)
    return sandbox_id


async def test_streamable_http_session_at_the_gateway(client_gateway: GatewayProcess) -> None:
    async with http_client(client_gateway) as client:
        sandbox_id = await exercise(client)
        made = [s["id"] for s in json.loads(texts(await client.call_tool("list_sandboxes", {})))
                if s["metadata"].get("purpose") == "test"]
        assert await sandbox_status(client_gateway, sandbox_id) == "running"
    # The session ended (the client's DELETE): every sandbox it made is deleted.
    for made_id in [sandbox_id, *made]:
        await until(lambda i=made_id: sandbox_status(client_gateway, i), lambda s: s == "terminated",
                    what=f"sandbox {made_id} deleted with its MCP session")


async def test_stateless_http_names_the_sandbox_to_keep_state(client_gateway: GatewayProcess) -> None:
    async with http_client(client_gateway, mode="auto") as client:
        first = await client.call_tool("run_code", {"code": "y = 7"})
        sandbox_id = new_sandbox_id(first)
        again = await client.call_tool("run_code", {"code": "y * 6", "sandbox": sandbox_id})
        assert texts(again) == "42"
        assert decoded_png(await client.call_tool("run_code", {"code": PLOT, "sandbox": sandbox_id})).ndim == 3
        await client.call_tool("delete_sandbox", {"sandbox": sandbox_id})
    assert await sandbox_status(client_gateway, sandbox_id) == "terminated"


async def test_http_needs_a_key_and_sessions_belong_to_theirs(client_gateway: GatewayProcess) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=client_gateway.url, timeout=60) as raw:
        refused = await raw.post("/mcp", json=initialize, headers=accept)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        opened = await raw.post("/mcp", json=initialize, headers={**accept, **auth("alice")})
        assert opened.status_code == 200
        session = opened.headers["Mcp-Session-Id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        stolen = await raw.post("/mcp", json=ping, headers={**accept, **auth("bob"), "Mcp-Session-Id": session})
        assert stolen.status_code == 404  # another key cannot use alice's session
        closed = await raw.delete("/mcp", headers={**auth("alice"), "Mcp-Session-Id": session})
        assert closed.status_code == 200


async def test_stdio_server_of_the_command_line(client_gateway: GatewayProcess) -> None:
    env = {**os.environ, "CODE_GATEWAY_URL": client_gateway.url, "CODE_GATEWAY_API_KEY": KEYS["alice"]}
    async with Client(StdioServerParameters(command=CLI, args=["mcp"], env=env), mode="legacy") as client:
        sandbox_id = await exercise(client)
        made = [s["id"] for s in json.loads(texts(await client.call_tool("list_sandboxes", {})))
                if s["metadata"].get("purpose") == "test"]
    for made_id in [sandbox_id, *made]:
        await until(lambda i=made_id: sandbox_status(client_gateway, i), lambda s: s == "terminated",
                    what=f"sandbox {made_id} deleted at the end of the stdio session")


async def test_stdio_with_a_named_sandbox_uses_it_and_leaves_it(client_gateway: GatewayProcess) -> None:
    async with client_gateway.client("alice") as rest:
        sandbox_id = (await rest.post("/api/v1/sandboxes", json={})).json()["id"]
        try:
            env = {**os.environ, "CODE_GATEWAY_URL": client_gateway.url, "CODE_GATEWAY_API_KEY": KEYS["alice"]}
            parameters = StdioServerParameters(command=CLI, args=["mcp", "--sandbox", sandbox_id], env=env)
            async with Client(parameters, mode="legacy") as client:
                assert texts(await client.call_tool("run_code", {"code": "z = 5\nz * 2"})) == "10"
            assert await sandbox_status(client_gateway, sandbox_id) == "running"  # not the session's to delete
            history = (await rest.get(f"/api/v1/sandboxes/{sandbox_id}/executions")).json()["executions"]
            assert [e["code"] for e in history] == ["z = 5\nz * 2"]
        finally:
            await rest.delete(f"/api/v1/sandboxes/{sandbox_id}")
