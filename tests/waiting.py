"""Waiting on conditions, never on the clock: tests poll for the state they need, within a generous bound.

    execution = await wait_finished(alice, execution_id)
    pending = await until_running(alice, sandbox_id, "import time; time.sleep(60)")   # it runs now
    await until(lambda: pool.describe()["ready"] == 2, what="a full pool")
    pending = await until_running(alice, sandbox_id, HOLD)     # runs until the test says so:
    await release(alice, sandbox_id)                           # "still running" without guessing a duration

A fixed sleep guesses how long something takes, and on a loaded 2-core machine the guess is
wrong sooner or later. The bounds here are far above any normal duration: they only turn a
hang into a failure that says what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from tests.gateways import run

T = TypeVar("T")

def hold(name: str = "release") -> str:
    """Code that runs until the test calls ``release`` with the same ``name`` (a file ``.<name>`` appears
    in the sandbox's working directory). The file stays: use another name to hold the sandbox again."""
    return f"import os as _os, time as _time\nwhile not _os.path.exists('.{name}'):\n    _time.sleep(0.02)\n"


HOLD = hold()


async def until(probe: Callable[[], T | Awaitable[T]], done: Callable[[T], object] = bool, *, what: str,
                timeout: float = 60, interval: float = 0.05) -> T:
    """Call ``probe`` (sync or async) until ``done`` holds for its result, and return that result.

    Fails after ``timeout`` seconds, naming ``what`` was awaited and the last result seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if done(result):  # type: ignore[arg-type]
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last seen: {result!r}")
        await asyncio.sleep(interval)


async def wait_finished(client: httpx.AsyncClient, execution_id: str, timeout: float = 60) -> dict[str, Any]:
    """The execution once it is no longer queued or running."""

    async def fetch() -> dict[str, Any]:
        return (await client.get(f"/api/v1/executions/{execution_id}")).json()

    return await until(fetch, lambda e: e["status"] not in ("queued", "running"),
                       what=f"execution {execution_id} to finish", timeout=timeout, interval=0.1)


async def until_status(client: httpx.AsyncClient, sandbox_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """The sandbox once its status is ``status``."""

    async def fetch() -> dict[str, Any]:
        return (await client.get(f"/api/v1/sandboxes/{sandbox_id}")).json()

    return await until(fetch, lambda s: s["status"] == status, what=f"sandbox {sandbox_id} to be {status}",
                       timeout=timeout)


async def executions_of(client: httpx.AsyncClient, sandbox_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/sandboxes/{sandbox_id}/executions")
    assert response.status_code == 200, response.text
    return response.json()["executions"]


async def until_running(client: httpx.AsyncClient, sandbox_id: str, code: str,
                        **extra: Any) -> asyncio.Task[dict[str, Any]]:
    """Submit ``code`` and return its execution (as a task) once the kernel runs it and printed ``started``."""
    task = asyncio.create_task(run(client, sandbox_id, "print('started', flush=True)\n" + code, **extra))

    async def running() -> bool:
        if task.done():
            raise AssertionError(f"the execution ended before it was seen running: {task.result()}")
        executions = await executions_of(client, sandbox_id)
        return bool(executions) and executions[-1]["status"] == "running" and "started" in executions[-1]["stdout"]

    await until(running, what=f"the execution in sandbox {sandbox_id} to run")
    return task


async def release(client: httpx.AsyncClient, sandbox_id: str, name: str = "release") -> None:
    """Let the sandbox's ``hold(name)`` code go on (through the files API, which works while the kernel is busy)."""
    response = await client.put(f"/api/v1/sandboxes/{sandbox_id}/files/.{name}", content=b"")
    assert response.status_code == 201, response.text


async def pool_state(client: httpx.AsyncClient, ready: int, timeout: float = 60) -> dict[str, Any]:
    """The warm pool's state (from /health) once it holds ``ready`` sandboxes and starts none."""

    async def fetch() -> dict[str, Any]:
        return (await client.get("/health")).json()["pool"]

    return await until(fetch, lambda p: p["ready"] == ready and not p["starting"],
                       what=f"a pool with {ready} ready", timeout=timeout)
