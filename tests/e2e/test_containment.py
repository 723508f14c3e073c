"""Abuse a sandbox may try, contained by its container: fork and memory bombs, disk fill, output flood, outside kills, leftovers.

Each test runs under both runtimes (runc and gVisor: ``docker_gateway_of_each_runtime``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from typing import Any

import httpx
import pytest
import requests

from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_SANDBOX, container_name
from gateway.provisioners.isolation import HOST_RUN_DIR, HOST_TASKS_BASE, HOST_TASKS_PER_PID
from gateway.provisioners.mounts import mounts_under
from gateway.provisioners.usage import cgroup_paths
from tests.gateways import InProcessGateway, create, inside, run
from tests.provisioned import (  # noqa: F401  (fixtures)
    container_of,
    containers_labelled,
    docker_as_the_gateway,
    docker_gateway_of_each_runtime,
    engine_of,
    gvisor_processes,
    runtime,
)
from tests.waiting import release, until, until_running, until_status

pytestmark = pytest.mark.docker


async def responsive(gateway: InProcessGateway, client: httpx.AsyncClient, sandbox_id: str) -> None:
    """The gateway answers /health and runs code in another sandbox (generous bounds, not timings)."""
    async with gateway.client(None, timeout=20) as anonymous:
        assert (await anonymous.get("/health")).status_code == 200
    execution = await asyncio.wait_for(run(client, sandbox_id, "21 * 2"), 20)
    assert execution["result"] == {"text/plain": "42"}


async def test_fork_bomb_is_held_by_the_pids_limit(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, bob: httpx.AsyncClient, docker_client: Any,
    runtime: str,
) -> None:
    bombed = (await create(alice, resources={"pids": 64}))["id"]
    other = (await create(bob))["id"]

    # Processes can be started only up to the limit (threads count too): then fork fails with EAGAIN.
    counted = await inside(alice, bombed, """
import json, subprocess
procs, error = [], None
try:
    for _ in range(500):
        procs.append(subprocess.Popen(['sleep', '60']))
except OSError as exc:
    error = exc.errno
for p in procs:
    p.kill(); p.wait()
print(json.dumps([len(procs), error]))
""")
    assert 0 < counted[0] < 64 and counted[1] == 11  # EAGAIN

    # A real bomb: every child forks forever. It runs in the background for the rest of the test.
    started = await run(alice, bombed, """
import subprocess, sys
bomb = subprocess.Popen([sys.executable, '-c', '''
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
'''])
""")
    assert started["status"] == "completed", started
    # The bomb has filled the pids limit (and keeps forking): it is held there.
    if runtime == "runc":
        await until(lambda: pids_in_use(docker_client, bombed), lambda pids: pids == 64,
                    what="the fork bomb to reach the pids limit")
    else:
        # gVisor's kernel holds the bomb's processes (RLIMIT_NPROC, counted inside: its process
        # table, read from the host with runsc, never passes the limit), while its Sentry's host
        # threads keep growing (ptrace platform) until the host's budget for it stops them: the
        # sandbox ends, the host never lent it more tasks than that budget.
        budget = HOST_TASKS_BASE + HOST_TASKS_PER_PID * 64

        def held() -> int | None:
            try:
                processes, tasks = gvisor_processes(docker_client, bombed), host_tasks(docker_client, bombed)
            except (AssertionError, OSError, subprocess.CalledProcessError):
                if container_of(docker_client, bombed).attrs["State"]["Running"]:
                    raise
                return None  # (the Sentry is gone)
            assert processes <= 64 and tasks <= budget, (processes, tasks)
            return processes

        await until(lambda: asyncio.to_thread(held), lambda count: count is None or count >= 48,
                    what="the fork bomb to reach the process limit")
        ended = await until_status(alice, bombed, "failed", timeout=120)
        assert ended["status_reason"] in ("kernel_died", "sandbox_died"), ended
    await responsive(docker_gateway, bob, other)

    # The bombed sandbox comes back: a restart is a fresh container.
    old_id = container_of(docker_client, bombed).id
    restarted = await alice.post(f"/api/v1/sandboxes/{bombed}/restart")
    assert restarted.status_code == 200, restarted.text
    assert container_of(docker_client, bombed).id != old_id
    assert (await run(alice, bombed, "1 + 1"))["result"] == {"text/plain": "2"}
    assert docker_client.containers.list(all=True, filters={"id": old_id}) == []


def host_tasks(docker_client: Any, sandbox_id: str) -> int:
    """The tasks the container's pids cgroup counts on the host (for gVisor: the Sentry's)."""
    state = container_of(docker_client, sandbox_id).attrs["State"]
    assert state["Running"], state
    paths = cgroup_paths(int(state["Pid"]))
    return int((paths.get("pids") or paths["unified"]).joinpath("pids.current").read_text())


def pids_in_use(docker_client: Any, sandbox_id: str) -> int:
    """Tasks (processes and threads) the container's pids cgroup counts right now, never over its limit;
    -1 when the engine, busy with the bomb, did not answer in time (then ask again)."""
    try:
        stats = container_of(docker_client, sandbox_id).stats(stream=False, one_shot=True)
    except requests.exceptions.Timeout:
        return -1
    current, limit = stats["pids_stats"]["current"], stats["pids_stats"]["limit"]
    assert limit == 64 and current <= limit, stats["pids_stats"]
    return int(current)


async def test_memory_bomb_ends_out_of_memory_and_restart_works(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    sid = (await create(alice, resources={"memory_mb": 256}))["id"]
    other = (await create(bob))["id"]
    await run(alice, sid, "before = 1")
    execution = await run(alice, sid, "chunks = []\nwhile True:\n    chunks.append(b'x' * (32 << 20))", timeout=30)
    assert execution["status"] == "failed", execution  # not timed_out: noticed at once
    assert execution["error"]["code"] == "out_of_memory"
    assert execution["error"]["ename"] == "OutOfMemory"
    sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert sandbox["status"] == "failed" and sandbox["status_reason"] == "out_of_memory"
    refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
    assert refused.status_code == 409
    await responsive(docker_gateway, bob, other)

    assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
    fresh = await run(alice, sid, "before")
    assert fresh["status"] == "failed" and fresh["error"]["ename"] == "NameError"  # a fresh kernel
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"


async def test_disk_fill_stops_inside_and_nothing_outside_grows(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any
) -> None:
    sid = (await create(alice, resources={"disk_mb": 32, "memory_mb": 512}))["id"]
    runtime_dir = docker_gateway.app.launcher.runtime_dir
    # (gVisor's socket directory is a host tmpfs of its own, 1 MiB: counted apart)
    mounted = mounts_under(runtime_dir)
    before = _tree_bytes(runtime_dir, mounted)
    log_path = container_of(docker_client, sid).attrs["LogPath"]

    filled = await inside(alice, sid, """
import errno, json, os
result = {}
for path in ['/home/sandbox/fill', '/tmp/fill', '/run/code-gateway/fill']:
    written = 0
    try:
        with open(path, 'wb') as f:
            while True:
                f.write(b'x' * (1 << 20))
                f.flush()
                written += 1 << 20
    except OSError as exc:
        result[path] = [exc.errno, written >> 20]
# The kernel's original stdout is the container log on the host: it is capped too.
with open('/proc/1/fd/1', 'wb') as log:
    for _ in range(8):
        log.write(b'y' * (1 << 20))
print(json.dumps(result))
""")
    assert filled["/home/sandbox/fill"][0] == 28 and filled["/home/sandbox/fill"][1] <= 32  # ENOSPC
    assert filled["/tmp/fill"][0] == 28 and filled["/tmp/fill"][1] <= 32
    assert filled["/run/code-gateway/fill"][0] == 28 and filled["/run/code-gateway/fill"][1] <= 1

    size_rw = subprocess.run(["docker", "inspect", "--size", "--format", "{{.SizeRw}}", container_name(sid)],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert size_rw in ("0", "<no value>")  # the container's writable layer stayed empty
    assert _tree_bytes(runtime_dir, mounted) - before < 64 << 10  # the host-side sandbox dir holds sockets only
    for mount in mounted:  # gVisor: what the sandbox wrote to its socket directory is bounded there
        assert mount.name == HOST_RUN_DIR
        capacity = os.statvfs(mount)
        assert capacity.f_blocks * capacity.f_frsize == 1 << 20
    assert await _log_bytes(log_path) < 4 << 20  # json-file log capped (max-size 1m, max-file 1)

    # Freeing space makes the sandbox usable again.
    assert await inside(alice, sid, """
import json, os
for p in ['/home/sandbox/fill', '/tmp/fill', '/run/code-gateway/fill']:
    os.remove(p)
open('/home/sandbox/ok', 'w').write('ok')
print(json.dumps(open('/home/sandbox/ok').read()))
""") == "ok"


async def _log_bytes(log_path: str) -> int:
    """What a container's json-file log holds on the host. Docker 20.10 rotates even with max-file 1:
    it renames the log to ``.1`` (over the one before) and creates it afresh, so the log is at most
    twice max-size, and for a moment there is none (dockerd may still be writing what the kernel
    wrote when the test looks)."""
    def sizes() -> int | None:
        try:
            current = os.path.getsize(log_path)
        except FileNotFoundError:
            return None  # (between the rename and the new file)
        try:
            return current + os.path.getsize(log_path + ".1")
        except FileNotFoundError:
            return current
    found: int = await until(sizes, lambda size: size is not None, what=f"the container log {log_path}", timeout=10)
    return found


def _tree_bytes(root: Any, skip: list[Any]) -> int:
    total = 0
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if os.path.join(directory, d) not in map(str, skip)]
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total


async def test_output_flood_is_truncated_and_the_gateway_stays_responsive(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    flooding = (await create(alice))["id"]
    other = (await create(bob))["id"]
    # At least ~30 MiB in 100 kB lines over a few seconds, and on until the test says so (an unpaced
    # loop would just run the kernel out of memory: ipykernel buffers what it has not sent yet, and
    # that is the sandbox's memory).
    flood = """
import os, time
line = 'x' * 100_000
printed = 0
while printed < 300 or not os.path.exists('.release'):
    print(line)
    time.sleep(0.01)
    printed += 1
"""
    async with alice.stream("POST", f"/api/v1/sandboxes/{flooding}/execute", json={"code": flood, "timeout": 120},
                            headers={"Accept": "application/x-ndjson"}) as response:
        lines = response.aiter_lines()
        assert json.loads(await anext(lines))["type"] == "output"  # the flood is on
        await responsive(docker_gateway, bob, other)  # during the flood: it cannot end before the release
        await release(alice, flooding)
        events = [json.loads(line) async for line in lines if line]
    execution = events[-1]["execution"]
    assert execution["status"] == "completed", execution["status"]
    assert execution["truncated"] is True
    kept = sum(len(o.get("text", "")) for o in execution["outputs"])
    assert kept <= docker_gateway.app.sandboxes.max_execution_output_bytes + (1 << 20)
    assert (await run(alice, flooding, "'still here'"))["result"] == {"text/plain": "'still here'"}


@pytest.mark.parametrize("how", ["kill", "remove"])
async def test_container_killed_from_outside_fails_the_execution_at_once(
    how: str, docker_gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any
) -> None:
    sid = (await create(alice))["id"]
    await run(alice, sid, "x = 41")
    old_id = container_of(docker_client, sid).id
    pending = await until_running(alice, sid, "import time\ntime.sleep(100)", timeout=60)
    if how == "kill":
        container_of(docker_client, sid).kill()
    else:
        container_of(docker_client, sid).remove(force=True)
    execution = await asyncio.wait_for(pending, 30)  # far sooner than the 60 s timeout
    assert execution["status"] == "failed", execution
    assert execution["error"]["code"] == "sandbox_died"
    sandbox = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert sandbox["status"] == "failed" and sandbox["status_reason"] == "sandbox_died"

    assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
    assert container_of(docker_client, sid).id != old_id
    assert docker_client.containers.list(all=True, filters={"id": old_id}) == []
    fresh = await run(alice, sid, "x")
    assert fresh["error"]["ename"] == "NameError"


async def test_kernel_exit_inside_is_kernel_died(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    execution = await run(alice, sid, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert execution["status"] == "failed" and execution["error"]["code"] == "kernel_died"
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
    assert (await run(alice, sid, "1"))["status"] == "completed"


async def test_no_container_left_after_delete_or_shutdown(tmp_path: Any, docker_client: Any, runtime: str) -> None:
    gateway = InProcessGateway(tmp_path / "data", f"--runtime={runtime}", provisioner="docker")
    async with gateway:
        instance = engine_of(gateway).instance_id
        async with gateway.client("alice") as client:
            ids = [s["id"] for s in await asyncio.gather(*(create(client) for _ in range(3)))]
            await run(client, ids[0], "import subprocess\nsubprocess.Popen(['sleep', '300'])")
            assert len(containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}")) == 3
            assert (await client.delete(f"/api/v1/sandboxes/{ids[0]}")).status_code == 204
            assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={ids[0]}") == []
    assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}") == []
    runtime_dir = gateway.app.launcher.runtime_dir
    assert mounts_under(runtime_dir) == []  # (gVisor's socket directories are unmounted)
    assert not runtime_dir.exists()  # no sandbox directory left, so the runtime directory went too
    assert [t for t in threading.enumerate() if t.name == "docker-events"] == []

    async with InProcessGateway(tmp_path / "data", provisioner="local") as again:
        async with again.client("alice") as client:
            for sid in ids[1:]:
                sandbox = (await client.get(f"/api/v1/sandboxes/{sid}")).json()
                assert sandbox["status"] == "terminated" and sandbox["status_reason"] == "gateway_shutdown"


async def test_sandbox_deaths_are_noticed_while_others_keep_running(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    ids = [s["id"] for s in await asyncio.gather(*(create(alice) for _ in range(4)))]
    engine = engine_of(docker_gateway)
    await engine.call(engine.client.api.kill, container_name(ids[0]))
    await until_status(alice, ids[0], "failed")
    for sid in ids[1:]:
        assert (await run(alice, sid, "2 + 2"))["result"] == {"text/plain": "4"}


async def test_a_kernel_that_dies_while_starting_fails_the_create_at_once(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any
) -> None:
    # 20 MiB cannot hold an IPython kernel: it is killed while starting, and create says so
    # (well within the 60 s the gateway would otherwise wait for the kernel to answer).
    response = await asyncio.wait_for(alice.post("/api/v1/sandboxes", json={"resources": {"memory_mb": 20}}), 30)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "sandbox_start_failed"
    assert "out_of_memory" in response.json()["error"]["message"]
    instance = engine_of(docker_gateway).instance_id
    assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}") == []
