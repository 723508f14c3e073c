"""Real Jupyter clients through the gateway: a `jupyter server --gateway-url` and nbclient behind it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nbformat
import pytest
import websockets
from jupyter_server.gateway.managers import GatewayKernelManager
from nbclient import NotebookClient

from tests.api.test_jupyter import execute_request, replies_to
from tests.gateways import KEYS, InProcessGateway
from tests.jupyter_clients import AuthGatewayKernelClient, GatewayKernels, JupyterProcess, gateway_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def jupyter_server(gateway: InProcessGateway, tmp_path: Any) -> AsyncIterator[str]:
    """A real Jupyter Server (no auth of its own) whose kernels live in our gateway, as alice."""
    root = tmp_path / "root"
    root.mkdir()
    server = JupyterProcess("jupyter_server", gateway.url, root=root, args=("--ServerApp.disable_check_xsrf=True",))
    try:
        await server.wait_up()
        yield server.url
    finally:
        server.stop()


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


async def test_nbclient_executes_a_notebook_through_jupyter_server(gateway: InProcessGateway,
                                                                   jupyter_server: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 21 * 2\nx"),
        nbformat.v4.new_code_cell("print('y' * 2_000_000)"),
        nbformat.v4.new_code_cell("1 / 0"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with gateway_client(jupyter_server, KEYS["alice"]):
        km = GatewayKernels(kernel_name="python3", client_factory=AuthGatewayKernelClient)
        # (iopub_timeout: how long nbclient waits, after a cell's reply, for its outputs to end; by
        # default 4 s, which a 2 MB output relayed by Jupyter Server on a loaded machine can miss)
        client = NotebookClient(nb, km=km, timeout=60, iopub_timeout=60, kernel_name="python3", allow_errors=True)
        await client.async_execute()
        await km.shutdown_kernel()
    first, second, third = nb.cells
    assert first.outputs[0]["data"]["text/plain"] == "42"
    assert "".join(o["text"] for o in second.outputs) == "y" * 2_000_000 + "\n"
    assert third.outputs[0]["ename"] == "ZeroDivisionError"
    async with gateway.client("alice") as alice:
        assert all(s["status"] == "terminated" for s in (await alice.get("/api/v1/sandboxes")).json()["sandboxes"])


async def test_a_kernel_of_jupyter_server_s_gateway_manager_is_alive(gateway: InProcessGateway) -> None:
    """What jupyter_client's ``wait_for_ready`` asks when a ``kernel_info`` reply takes over a second
    (nbclient's start on a loaded machine): ``_async_is_alive``. jupyter_server's manager fails it
    (it asserts a local provisioner), so the tests drive ``GatewayKernels``, which answers as the
    manager's own ``is_alive`` does. When upstream fixes it, the first check fails: drop the class."""
    with gateway_client(gateway.url, KEYS["alice"]):
        km = GatewayKernels(kernel_name="python3", client_factory=AuthGatewayKernelClient)
        await km.start_kernel()
        try:
            with pytest.raises(AssertionError):
                await GatewayKernelManager._async_is_alive(km)
            assert await km._async_is_alive() is True
        finally:
            await km.shutdown_kernel()
