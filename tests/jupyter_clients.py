"""Stock Jupyter clients against a gateway: Jupyter Server / JupyterLab processes, and jupyter_server's
gateway kernel classes (what nbclient, papermill and jupyter_kernel_test drive).

    server = JupyterProcess("jupyterlab", gateway_url, root=tmp_path)   # jupyter lab --gateway-url=...
    await server.wait_up(); ...; server.stop()

    with gateway_client(gateway_url, KEYS["alice"]):
        km = GatewayKernels(kernel_name="python3", client_factory=AuthGatewayKernelClient)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websocket
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.utils import run_sync
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager
from jupyter_server.utils import url_path_join
from tornado.escape import url_escape

from tests.gateways import KEYS


class GatewayKernels(GatewayKernelManager):
    """jupyter_server's ``GatewayKernelManager``, alive when it says so. It overrides ``is_alive``,
    but jupyter_client's client asks ``_async_is_alive`` whenever a ``kernel_info`` reply takes over
    a second (a loaded machine), and that asserts a local provisioner, which a gateway's kernel
    has not: nbclient failed with AssertionError (jupyter_server 2.21.1, jupyter_client 8.10)."""

    async def _async_is_alive(self) -> bool:
        return bool(await self.is_alive())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterProcess:
    """``jupyter server`` or ``jupyter lab`` on a loopback port, its kernels in the gateway at ``gateway_url``."""

    def __init__(self, app: str, gateway_url: str, *, root: Path, user: str = "alice", token: str = "",
                 args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        home = root.parent / f"{root.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "jupyter.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", app, "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--gateway-url={gateway_url}", f"--GatewayClient.auth_token={KEYS[user]}",
             f"--IdentityProvider.token={token}", "--ServerApp.password=", f"--ServerApp.root_dir={root}", *args],
            env={"JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_CONFIG_DIR": str(home / "config"),
                 "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
                 "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PATH": "/usr/bin:/bin", "HOME": str(home)},
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        self.settings_dir = home / "lab-settings"

    async def wait_up(self, timeout: float = 120) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client, asyncio.timeout(timeout):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"jupyter exited ({self.process.returncode}):\n{self.log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/api")).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@contextlib.contextmanager
def gateway_client(url: str, token: str) -> Iterator[GatewayClient]:
    """jupyter_server's ``GatewayClient`` singleton pointed at ``url`` (what ``--gateway-url`` configures)."""
    GatewayClient.clear_instance()
    try:
        yield GatewayClient.instance(url=url, auth_token=token)
    finally:
        GatewayClient.clear_instance()


class AuthGatewayKernelClient(GatewayKernelClient):  # type: ignore[misc]
    """jupyter_server's gateway kernel client, sending the ``Authorization`` header on its WebSocket too.

    The stock class opens the channels WebSocket with no header, cookie or token at all (only TLS
    client certificates), so an authenticating gateway must refuse it; README shows this class.
    """

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


class BlockingGatewayKernelClient(AuthGatewayKernelClient):
    """The same client with the blocking ``get_*_msg`` that jupyter_kernel_test calls."""

    def get_shell_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return run_sync(self.shell_channel.get_msg)(*args, **kwargs)  # type: ignore[no-any-return]

    def get_iopub_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return run_sync(self.iopub_channel.get_msg)(*args, **kwargs)  # type: ignore[no-any-return]
