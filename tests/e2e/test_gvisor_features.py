"""What a gVisor sandbox offers is what a runc one offers: the warm pool, files, usage figures, contexts,
restart, pause and resume, re-attaching after the gateway was SIGKILLed — one gateway process, ``--runtime=gvisor``."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
from typing import Any

import pytest

from gateway.provisioners.docker import LABEL_INSTANCE
from gateway.provisioners.isolation import HOST_RUN_DIR
from gateway.provisioners.launcher import default_runtime_dir
from gateway.provisioners.mounts import mounts_under
from gateway.provisioners.runsc import SandboxProcess, parse_ps, state_root
from tests.api.test_pool import NEVER_SATURATED
from tests.e2e.test_docker_restart import instance_of
from tests.gateways import GatewayProcess, create, run
from tests.provisioned import container_of, containers_labelled
from tests.waiting import pool_state

pytestmark = pytest.mark.docker


def runtimes_of(docker_client: Any, tmp_path: Any) -> set[str]:
    """The runtimes of the test gateway's containers."""
    containers = containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(tmp_path / 'data')}")
    return {container.attrs["HostConfig"]["Runtime"] for container in containers}


@pytest.fixture
async def gvisor_process(tmp_path: Any, docker_client: Any) -> Any:
    gateway = GatewayProcess(tmp_path / "data", "--runtime=gvisor", "--pool-size=1", NEVER_SATURATED,
                             provisioner="docker")
    yield gateway
    gateway.kill()
    for container in containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(tmp_path / 'data')}"):
        container.remove(force=True)


def sandbox_processes(docker_client: Any, container_id: str) -> dict[int, SandboxProcess]:
    """What runs inside the gVisor sandbox, as runsc itself lists it (its state directory: the Sentry's)."""
    sentry = os.open(f"/proc/{docker_client.api.inspect_container(container_id)['State']['Pid']}",
                     os.O_PATH | os.O_DIRECTORY)
    try:
        root = state_root(sentry)
    finally:
        os.close(sentry)
    listed = subprocess.run(["runsc", f"--root={root}", "ps", container_id], capture_output=True, text=True,
                            check=True, timeout=60)
    return parse_ps(listed.stdout)


async def a_context_runs_is_interrupted_restarted_and_removed(alice: Any, docker_client: Any, container_id: str,
                                                               sid: str) -> None:
    """A second kernel exec'd in the gVisor sandbox: it runs code, a SIGINT (its timeout) reaches it
    inside the sandbox and keeps its state, a restart and a removal end its kernel and what it started."""
    before = set(sandbox_processes(docker_client, container_id))
    made = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "python"})
    assert made.status_code == 201, made.text
    context = made.json()["id"]
    started = await run(alice, sid, "import os, subprocess\nkept = 41\nchild = subprocess.Popen(['sleep', '600'])\n"
                        "os.getpid(), child.pid", context=context)
    assert started["status"] == "completed", started
    kernel, child = ast.literal_eval(started["result"]["text/plain"])
    processes = sandbox_processes(docker_client, container_id)
    assert processes[kernel].ppid == 0 and processes[child].ppid == kernel and kernel not in before
    # A timeout interrupts it (SIGINT, through runsc, to its pid in the sandbox): its state is kept.
    timed_out = await run(alice, sid, "import time\ntime.sleep(600)", context=context, timeout=1)
    assert timed_out["status"] == "timed_out" and "was interrupted" in timed_out["error"]["evalue"], timed_out
    assert (await run(alice, sid, "kept + 1", context=context))["result"] == {"text/plain": "42"}
    # A restart: a fresh kernel (its state and what the old one started are gone), still attached.
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/contexts/{context}/restart")).status_code == 200
    again = await run(alice, sid, "import os, subprocess\nchild = subprocess.Popen(['sleep', '600'])\n"
                      "'kept' in dir(), os.getpid(), child.pid", context=context)
    assert again["status"] == "completed", again
    known, restarted, second_child = ast.literal_eval(again["result"]["text/plain"])
    assert known is False and restarted != kernel
    processes = sandbox_processes(docker_client, container_id)
    assert not {kernel, child} & set(processes) and processes[second_child].ppid == restarted
    # Removed (SIGKILLed with what it started): nothing of it runs; the sandbox's own kernel answers.
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}/contexts/{context}")).status_code == 204
    assert set(sandbox_processes(docker_client, container_id)) == before
    assert (await run(alice, sid, "1 + 1"))["result"] == {"text/plain": "2"}


async def test_pool_files_restart_pause_and_re_attach_under_gvisor(
    gvisor_process: GatewayProcess, docker_client: Any, tmp_path: Any
) -> None:
    process = gvisor_process
    await process.start()
    async with process.client() as alice, process.client(None) as anonymous:
        # A pooled sandbox is a gVisor one, and a request for the pool's profile gets it.
        await pool_state(anonymous, ready=1)
        health = (await anonymous.get("/health")).json()
        assert health["pool"]["isolation"] == "gvisor" and health["runtimes"]["default"] == "gvisor"
        sandbox = await create(alice)
        sid = sandbox["id"]
        assert sandbox["isolation"] == "gvisor"
        assert (await anonymous.get("/health")).json()["pool"]["claimed"] == 1
        assert container_of(docker_client, sid).attrs["HostConfig"]["Runtime"] == "runsc"
        # An rlimit cannot be lowered on a running container: other pids start cold, with theirs.
        fewer = await create(alice, resources={"pids": 50})
        assert (await anonymous.get("/health")).json()["pool"]["claimed"] == 1
        assert container_of(docker_client, fewer["id"]).attrs["HostConfig"]["Ulimits"] == [
            {"Name": "nproc", "Soft": 50, "Hard": 50}]
        assert (await alice.delete(f"/api/v1/sandboxes/{fewer['id']}")).status_code == 204

        # Files both ways.
        assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/in.txt", content=b"uploaded")).status_code == 201
        assert (await run(alice, sid, "open('out.txt', 'w').write(open('in.txt').read().upper())"))["status"] \
            == "completed"
        assert (await alice.get(f"/api/v1/sandboxes/{sid}/files/out.txt")).content == b"UPLOADED"

        # Usage: memory and CPU from the Sentry's cgroup; what lives inside gVisor's kernel (the
        # tmpfs fill, the process count) the host cannot see: null, never a wrong figure.
        usage = (await alice.get(f"/api/v1/sandboxes/{sid}/metrics")).json()
        assert usage["memory"]["current_bytes"] > 10 << 20 and usage["cpu"]["seconds"] > 0, usage
        assert usage["pids"]["current"] is None and usage["disk"]["workdir_bytes"] is None, usage

        await a_context_runs_is_interrupted_restarted_and_removed(alice, docker_client,
                                                                  container_of(docker_client, sid).id, sid)

        # Restart: a fresh container (and a fresh socket directory), the same sandbox.
        old = container_of(docker_client, sid).id
        assert (await run(alice, sid, "gone = 1"))["status"] == "completed"
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).status_code == 200
        assert container_of(docker_client, sid).id != old
        assert (await run(alice, sid, "'gone' in dir()"))["result"] == {"text/plain": "False"}

        # Pause (files and variables saved, container gone) and resume.
        kept = "x = 41\ndef f(v):\n    return v + 1\nopen('kept.txt', 'w').write('kept')"
        assert (await run(alice, sid, kept))["status"] == "completed"
        paused = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
        run_dir = default_runtime_dir(str(tmp_path / "data"))
        assert not any(point.name == HOST_RUN_DIR and sid in str(point) for point in mounts_under(run_dir))
        resumed = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
        assert resumed.status_code == 200 and set(resumed.json()["restore"]["variables"]) == {"x", "f"}, resumed.text
        assert resumed.json()["isolation"] == "gvisor"
        assert runtimes_of(docker_client, tmp_path) == {"runsc"}  # (resumed on the pool's next sandbox)
        after = await run(alice, sid, "f(x), open('kept.txt').read()")
        assert after["result"] == {"text/plain": "(42, 'kept')"}, after

    # The gateway is SIGKILLed: the gVisor sandbox keeps running and is re-attached with its state.
    await process.stop(signal.SIGKILL)
    await process.start()
    async with process.client() as alice:
        assert (await run(alice, sid, "f(x)", timeout=20))["result"] == {"text/plain": "42"}  # (in memory only)
    assert await process.stop() == 0
    assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance_of(tmp_path / 'data')}") == []
    assert mounts_under(default_runtime_dir(str(tmp_path / "data"))) == []
