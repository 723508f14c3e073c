"""Real gateways for tests: in-process (``InProcessGateway``) or as a child process (``GatewayProcess``).

Both listen on a free loopback port and are reached over real HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from gateway.app import GatewayApp

KEYS = {"alice": "alice-key", "bob": "bob-key", "admin": "admin-key"}
KEY_PAIRS = ",".join(f"{user}:{key}" for user, key in KEYS.items())


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[user]}"}


def without_pool_unless_asked(args: tuple[str, ...]) -> list[str]:
    """No warm pool unless a test asks for one: on 2 cores a background refill slows every other test."""
    return list(args) if any(a.startswith("--pool-size") for a in args) else ["--pool-size=0", *args]


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /sandboxes; the new sandbox (the test fails unless it is 201)."""
    response = await client.post("/api/v1/sandboxes", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def run(client: httpx.AsyncClient, sandbox_id: str, code: str, **extra: Any) -> dict[str, Any]:
    """Execute ``code``; the Execution (the test fails unless it is 200).

    The request waits as long as the execution may run (its ``timeout``, plus a margin), even where
    that is longer than the client's own timeout.
    """
    wait: Any = httpx.USE_CLIENT_DEFAULT
    if isinstance(extra.get("timeout"), (int, float)) and extra["timeout"] + 60 > (client.timeout.read or 0):
        wait = httpx.Timeout(client.timeout.connect, read=extra["timeout"] + 60)
    response = await client.post(f"/api/v1/sandboxes/{sandbox_id}/execute", json={"code": code, **extra},
                                 timeout=wait)
    assert response.status_code == 200, response.text
    return response.json()


async def inside(client: httpx.AsyncClient, sandbox_id: str, code: str) -> Any:
    """Run ``code`` in the sandbox; it prints one JSON value, which is returned."""
    execution = await run(client, sandbox_id, code)
    assert execution["status"] == "completed", execution
    return json.loads(execution["stdout"])


class InProcessGateway:
    """A ``GatewayApp`` running in the test's own event loop."""

    def __init__(self, data_dir: Path, *args: str, provisioner: str = "local") -> None:
        self.app = GatewayApp()
        self.app.initialize(
            ["--ip=127.0.0.1", "--port=0", f"--data-dir={data_dir}", f"--provisioner={provisioner}",
             f"--api-keys={KEY_PAIRS}", *without_pool_unless_asked(args)]
        )
        self.url = ""

    async def __aenter__(self) -> InProcessGateway:
        await self.app.startup()
        self.url = f"http://127.0.0.1:{self.app.bound_port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.app.shutdown()

    def client(self, user: str | None = "alice", **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 120)
        headers = auth(user) if user else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kwargs)


class GatewayProcess:
    """``code-gateway`` as a separate process, for restarts and kills.

    ``host`` is the address it listens on; ``wrapper`` a command it runs under (``ip netns exec NAME``:
    a gateway on another host, ``tests.netns``). ``command`` runs another installation (default: this
    checkout's, ``python -m gateway``); ``cwd`` is where it runs.
    """

    def __init__(self, data_dir: Path, *args: str, provisioner: str = "local", env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", wrapper: tuple[str, ...] = (),
                 command: list[str] | None = None, cwd: Path | None = None):
        self.data_dir = data_dir
        self.host = host
        self.wrapper = wrapper
        self.command = command or [sys.executable, "-m", "gateway"]
        self.cwd = cwd
        self.args = args
        self.provisioner = provisioner
        self.env = {**os.environ, "GATEWAY_API_KEYS": KEY_PAIRS, **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []

    async def start(self, timeout: float = 120) -> GatewayProcess:
        self.output = []
        self.process = subprocess.Popen(
            [*self.wrapper, *self.command, f"--ip={self.host}", "--port=0",
             f"--data-dir={self.data_dir}", f"--provisioner={self.provisioner}", *without_pool_unless_asked(self.args)],
            env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        port = await asyncio.wait_for(asyncio.to_thread(self._read_port), timeout)
        self.url = f"http://{self.host}:{port}"
        return self

    def _read_port(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = re.search(rf"on http://{re.escape(self.host)}:(\d+)", line)
            if match:
                # Keep draining so the child never blocks on a full pipe.
                threading_drain(self.process, self.output)
                return int(match.group(1))
        self.process.stdout.close()
        raise RuntimeError("gateway exited before listening:\n" + "".join(self.output))

    def client(self, user: str | None = "alice", **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 120)
        headers = auth(user) if user else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kwargs)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def threading_drain(process: subprocess.Popen[str], sink: list[str]) -> None:
    """Read the rest of ``process``'s output into ``sink``; the pipe is closed at its end (here, never
    under a blocked read: a kernel that outlived a killed gateway may hold it open a while)."""

    def drain() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                sink.append(line)

    threading.Thread(target=drain, daemon=True).start()
