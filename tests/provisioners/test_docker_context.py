"""A context's kernel starts as an exec in its sandbox's container; on a busy engine the exec's pid
may come late, and the provisioner waits for it (within the launcher's startup timeout) instead of
giving up after a fixed number of polls (it once gave up after 2 s: a JavaScript context under a
loaded CI failed to start with "the context's kernel did not start")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.provisioners.docker import DockerEngine, default_image
from gateway.provisioners.execs import ExecNotStarted, exec_pid

pytestmark = pytest.mark.docker


@pytest.fixture
async def container(docker_client: Any) -> AsyncIterator[tuple[DockerEngine, str]]:
    """An engine of the gateway's kind and a running container of the sandbox image (a sleep)."""
    engine = DockerEngine(base_url="", instance_id="test-docker-context", image=default_image())
    engine.client = await engine.call(engine._client)
    running = docker_client.containers.run(default_image(), ["sleep", "300"], entrypoint=[], detach=True,
                                           network_mode="none", labels={"code-gateway.test": "docker-context"})
    try:
        yield engine, running.id
    finally:
        running.remove(force=True)
        await engine.stop()


async def test_an_exec_the_engine_starts_late_is_waited_for(container: tuple[DockerEngine, str]) -> None:
    engine, container_id = container
    api = engine.client.api
    exec_id = (await engine.call(api.exec_create, container_id, ["sleep", "60"]))["Id"]
    waiting = asyncio.ensure_future(exec_pid(engine, exec_id))
    await asyncio.sleep(3)  # past the old bound: the engine has no pid yet, so neither has the wait
    assert not waiting.done()
    await engine.call(api.exec_start, exec_id, detach=True)
    pid = await asyncio.wait_for(waiting, 30)
    assert pid == (await engine.call(api.exec_inspect, exec_id))["Pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # the exec's own process, on the host
        assert cmdline.read().split(b"\0")[:2] == [b"sleep", b"60"]
    os.kill(pid, 9)


async def test_an_exec_that_cannot_start_is_refused(container: tuple[DockerEngine, str]) -> None:
    engine, container_id = container
    api = engine.client.api
    exec_id = (await engine.call(api.exec_create, container_id, ["/no/such/kernel"]))["Id"]
    with pytest.raises(Exception):
        await engine.call(api.exec_start, exec_id, detach=True)  # the engine says so at once ...
    with pytest.raises(ExecNotStarted, match="exit code"):  # ... and so does the wait, not hang
        await asyncio.wait_for(exec_pid(engine, exec_id), 30)


async def test_a_bounded_wait_gives_up_at_its_bound(container: tuple[DockerEngine, str]) -> None:
    """What a command's start asks (``within``): an exec the engine never started is refused, not waited for."""
    engine, container_id = container
    api = engine.client.api
    exec_id = (await engine.call(api.exec_create, container_id, ["sleep", "60"]))["Id"]
    with pytest.raises(ExecNotStarted, match="no process in 1 s"):
        await asyncio.wait_for(exec_pid(engine, exec_id, within=1), 30)
