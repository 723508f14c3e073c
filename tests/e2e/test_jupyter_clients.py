"""Real Jupyter clients through the gateway: a `jupyter server --gateway-url` and nbclient behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nbformat
import pytest
import websocket
import websockets
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager
from jupyter_server.utils import url_path_join
from nbclient import NotebookClient
from tornado.escape import url_escape

from tests.api.test_jupyter import execute_request, replies_to
from tests.gateways import KEYS, InProcessGateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def jupyter_server(gateway: InProcessGateway, tmp_path: Any) -> AsyncIterator[str]:
    """A real Jupyter Server (no auth of its own) whose kernels live in our gateway, as alice."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--gateway-url={gateway.url}", f"--GatewayClient.auth_token={KEYS['alice']}",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={tmp_path}"],
        env={"JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
             "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(300):
                try:
                    if (await client.get("/api")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("jupyter server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_jupyter_server_runs_code_in_our_sandboxes(gateway: InProcessGateway, jupyter_server: str) -> None:
    async with httpx.AsyncClient(base_url=jupyter_server, timeout=60) as client:
        specs = (await client.get("/api/kernelspecs")).json()
        assert "python3" in specs["kernelspecs"]
        kernel = (await client.post("/api/kernels", json={"name": "python3"})).json()
    async with gateway.client("alice") as alice:
        sandbox = (await alice.get(f"/api/v1/sandboxes/{kernel['id']}")).json()
        assert sandbox["status"] == "running" and sandbox["owner"] == "alice"
    url = jupyter_server.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?session_id={uuid.uuid4()}"
    async with websockets.connect(url, max_size=None) as ws:
        request = execute_request("import os\nprint('from', os.environ.get('HOME'))\n6 * 7")
        await ws.send(json.dumps(request))
        got = await replies_to(ws, request["header"]["msg_id"])
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]
    assert any(m["msg_type"] == "stream" and m["content"]["text"].startswith("from ") for m in got)
    async with httpx.AsyncClient(base_url=jupyter_server, timeout=60) as client:
        assert (await client.delete(f"/api/kernels/{kernel['id']}")).status_code == 204
    async with gateway.client("alice") as alice:
        assert (await alice.get(f"/api/v1/sandboxes/{kernel['id']}")).json()["status"] == "terminated"


class AuthGatewayKernelClient(GatewayKernelClient):  # type: ignore[misc]
    """jupyter_server's gateway kernel client opens its WebSocket without the auth header; add it."""

    async def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = True,
                             control: bool = True) -> None:
        gateway = GatewayClient.instance()
        url = url_path_join(gateway.ws_url, gateway.kernels_endpoint, url_escape(self.kernel_id), "channels")
        self.channel_socket = websocket.create_connection(
            url, timeout=gateway.KERNEL_LAUNCH_TIMEOUT, enable_multithread=True,
            header=[f"{gateway.auth_header_key}: {gateway.auth_scheme} {gateway.auth_token}"],
        )
        await ensure_async(AsyncKernelClient.start_channels(self, shell=shell, iopub=iopub, stdin=stdin, hb=hb,
                                                            control=control))
        self.response_router = threading.Thread(target=self._route_responses, daemon=True)
        self.response_router.start()


async def test_nbclient_executes_a_notebook_through_jupyter_server(gateway: InProcessGateway,
                                                                   jupyter_server: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 21 * 2\nx"),
        nbformat.v4.new_code_cell("print('y' * 2_000_000)"),
        nbformat.v4.new_code_cell("1 / 0"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    GatewayClient.clear_instance()
    GatewayClient.instance(url=jupyter_server, auth_token=KEYS["alice"])
    try:
        km = GatewayKernelManager(kernel_name="python3", client_factory=AuthGatewayKernelClient)
        client = NotebookClient(nb, km=km, timeout=60, kernel_name="python3", allow_errors=True)
        await client.async_execute()
        await km.shutdown_kernel()
    finally:
        GatewayClient.clear_instance()
    first, second, third = nb.cells
    assert first.outputs[0]["data"]["text/plain"] == "42"
    assert "".join(o["text"] for o in second.outputs) == "y" * 2_000_000 + "\n"
    assert third.outputs[0]["ename"] == "ZeroDivisionError"
    async with gateway.client("alice") as alice:
        assert all(s["status"] == "terminated" for s in (await alice.get("/api/v1/sandboxes")).json()["sandboxes"])
