"""Choosing a sandbox's runtime: ``--runtime`` (the operator's default), ``"isolation"`` per sandbox where
allowed, what /health and the OpenAPI document say, runsc's registration, and the gVisor socket directory."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gateway.provisioners.isolation import HOST_RUN_DIR, HOST_TASKS_BASE, HOST_TASKS_PER_PID
from gateway.provisioners.mounts import mounts_under
from tests.gateways import InProcessGateway, create, inside
from tests.provisioned import container_of

REPO = Path(__file__).resolve().parents[2]


async def test_a_local_gateway_offers_no_isolation(gateway: InProcessGateway, alice: Any) -> None:
    for isolation, status, code in (("gvisor", 403, "isolation_not_allowed"), ("runc", 422, "isolation_unavailable"),
                                    ("kata", 400, "invalid_request")):
        refused = await alice.post("/api/v1/sandboxes", json={"isolation": isolation})
        assert refused.status_code == status, refused.text
        assert refused.json()["error"]["code"] == code
        assert isolation in refused.json()["error"]["message"] or "isolation" in refused.json()["error"]["message"]
    assert (await alice.get("/api/v1/sandboxes")).json()["total"] == 0  # nothing was started
    sandbox = await create(alice)
    assert sandbox["isolation"] is None  # a local process: no isolation at all
    async with gateway.client(None) as anonymous:
        runtimes = (await anonymous.get("/health")).json()["runtimes"]
        published = (await anonymous.get("/api/v1/openapi.json")).json()
    assert runtimes["default"] == "runc" and runtimes["available"] == []
    assert set(runtimes["unavailable"]) == {"runc", "gvisor"}
    create_body = published["paths"]["/api/v1/sandboxes"]["post"]["requestBody"]["content"]["application/json"]
    assert create_body["schema"]["properties"]["isolation"]["not"] == {}  # none may be asked for here
    assert published["components"]["schemas"]["Sandbox"]["properties"]["isolation"]["enum"] == ["runc", "gvisor", None]


@pytest.mark.docker
async def test_each_sandbox_runs_under_the_isolation_it_asked_for(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--allow-isolation=gvisor", "--allow-network=true",
                                provisioner="docker") as gateway, gateway.client("alice") as alice, \
            gateway.client(None) as anonymous:
        runtimes = (await anonymous.get("/health")).json()["runtimes"]
        assert runtimes == {"default": "runc", "allowed": ["runc", "gvisor"], "available": ["runc", "gvisor"],
                            "unavailable": {}}
        published = (await anonymous.get("/api/v1/openapi.json")).json()
        schema = published["paths"]["/api/v1/sandboxes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"]["isolation"]["enum"] == ["runc", "gvisor"]

        default = await create(alice)
        gvisor = await create(alice, isolation="gvisor", resources={"pids": 50})
        assert default["isolation"] == "runc" and gvisor["isolation"] == "gvisor"
        assert (await alice.get(f"/api/v1/sandboxes/{gvisor['id']}")).json()["isolation"] == "gvisor"
        assert container_of(docker_client, default["id"]).attrs["HostConfig"]["Runtime"] == "runc"
        host = container_of(docker_client, gvisor["id"]).attrs["HostConfig"]
        assert host["Runtime"] == "runsc"
        # The sandbox's own process limit is an rlimit its kernel enforces; the host's pids cgroup
        # is a budget for the Sentry's tasks (several per sandbox process).
        assert host["Ulimits"] == [{"Name": "nproc", "Soft": 50, "Hard": 50}]
        assert host["PidsLimit"] == HOST_TASKS_BASE + HOST_TASKS_PER_PID * 50

        # The kernel under gVisor sees gVisor's kernel, not the host's: its release, version and
        # boot id are not the host's (under runc they are), nor are the host's modules listed.
        host = [os.uname().release, Path("/proc/version").read_text(),
                Path("/proc/sys/kernel/random/boot_id").read_text()]
        seen = ("import json, os\n"
                "def read(path):\n"
                "    try:\n"
                "        return open(path).read()\n"
                "    except OSError:\n"
                "        return None\n"
                "print(json.dumps([os.uname().release, read('/proc/version'), read('/proc/sys/kernel/random/boot_id'),"
                " read('/proc/modules')]))")
        under_gvisor, under_runc = await inside(alice, gvisor["id"], seen), await inside(alice, default["id"], seen)
        assert under_runc[:3] == host
        assert all(mine != theirs for mine, theirs in zip(under_gvisor[:3], host)), under_gvisor
        assert not under_gvisor[3]  # (no host module list)

        # Its socket directory: the gateway's own tmpfs (1 MiB), only the sandbox's uid reaches it,
        # inside the sandbox directory only the gateway (root) reaches.
        sandbox_dir = gateway.app.launcher.sandbox_dir(gvisor["id"])
        run_dir = sandbox_dir / HOST_RUN_DIR
        assert mounts_under(sandbox_dir) == [run_dir]
        assert os.stat(sandbox_dir).st_mode & 0o777 == 0o700 and os.stat(sandbox_dir).st_uid == 0
        info = os.stat(run_dir)
        assert info.st_mode & 0o777 == 0o700 and info.st_uid == 1000  # (jupyter_client adds the sticky bit)
        assert os.statvfs(run_dir).f_blocks * os.statvfs(run_dir).f_frsize == 1 << 20
        assert sorted(os.listdir(run_dir)) == ["connection.json", "k-1", "k-2", "k-3", "k-4", "k-5"]
        assert mounts_under(gateway.app.launcher.sandbox_dir(default["id"])) == []  # runc: nothing on the host

        # gVisor's runtime has no network: a sandbox asking for both is refused, naming why.
        refused = await alice.post("/api/v1/sandboxes", json={"isolation": "gvisor", "network": True})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "isolation_unavailable"
        assert "network" in refused.json()["error"]["message"]

        assert (await alice.delete(f"/api/v1/sandboxes/{gvisor['id']}")).status_code == 204
        assert not sandbox_dir.exists()  # unmounted, then removed
    assert mounts_under(gateway.app.launcher.runtime_dir) == []


@pytest.mark.docker
async def test_only_the_default_unless_the_operator_allows_more(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--runtime=gvisor", provisioner="docker") as gateway, \
            gateway.client("alice") as alice:
        sandbox = await create(alice)
        assert sandbox["isolation"] == "gvisor"
        assert container_of(docker_client, sandbox["id"]).attrs["HostConfig"]["Runtime"] == "runsc"
        assert (await create(alice, isolation="gvisor"))["isolation"] == "gvisor"  # the default may be named
        refused = await alice.post("/api/v1/sandboxes", json={"isolation": "runc"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "isolation_not_allowed"
        assert "'runc'" in refused.json()["error"]["message"] and "gvisor" in refused.json()["error"]["message"]
        assert (await alice.get("/api/v1/sandboxes")).json()["total"] == 2


@pytest.mark.docker
async def test_a_default_runtime_the_engine_lacks_stops_the_start(tmp_path: Any, docker_client: Any) -> None:
    gateway = InProcessGateway(tmp_path / "data", "--runtime=gvisor", "--DockerProvisioner.gvisor_runtime=no-such",
                               provisioner="docker")
    with pytest.raises(RuntimeError, match="no runtime 'no-such'.*ensure-docker.sh --runsc"):
        await gateway.app.startup()
    # Allowed but missing: the gateway starts, and says so.
    async with InProcessGateway(tmp_path / "data2", "--allow-isolation=gvisor",
                                "--DockerProvisioner.gvisor_runtime=no-such", provisioner="docker") as degraded, \
            degraded.client("alice") as alice, degraded.client(None) as anonymous:
        runtimes = (await anonymous.get("/health")).json()["runtimes"]
        assert runtimes["available"] == ["runc"] and "no-such" in runtimes["unavailable"]["gvisor"]
        refused = await alice.post("/api/v1/sandboxes", json={"isolation": "gvisor"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "isolation_unavailable"
        assert "no-such" in refused.json()["error"]["message"]


@pytest.mark.docker
def test_registering_runsc_again_changes_nothing(docker_client: Any) -> None:
    """``ensure-docker.sh --runsc`` where runsc is registered: daemon.json and the running engine are left alone."""
    daemon_json = Path("/etc/docker/daemon.json")
    before = daemon_json.read_bytes()
    engine_pid = Path("/var/run/docker.pid").read_text().strip()
    done = subprocess.run(["bash", str(REPO / "deploy/host/ensure-docker.sh"), "--runsc"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("docker engine is up, with runsc"), done.stdout
    assert daemon_json.read_bytes() == before
    assert Path("/var/run/docker.pid").read_text().strip() == engine_pid
    runtimes = docker_client.info()["Runtimes"]
    assert runtimes["runsc"] == {"path": "/usr/bin/runsc",
                                 "runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=all"]}
    assert json.loads(before)["runtimes"]["runsc"]["path"] == "/usr/bin/runsc"


@pytest.mark.docker
def test_runsc_is_registered_before_a_fresh_engine_starts_or_by_sighup_without_a_restart() -> None:
    """``ensure-docker.sh`` against an engine of the test's own (its own paths, its own network
    namespace: nothing of the machine's engine is touched): started without runsc, then
    ``--runsc`` reloads the running engine by SIGHUP (same pid), then ``--runsc`` changes nothing."""
    root = tempfile.mkdtemp(prefix="dk-", dir="/tmp")  # (short: the socket path is < 108 bytes)
    env = {
        **os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKERD_PIDFILE": f"{root}/docker.pid",
        "DOCKER_DAEMON_JSON": f"{root}/daemon.json", "DOCKERD_LOG": f"{root}/dockerd.log",
        "DOCKERD_ARGS": f"--data-root={root}/data --exec-root={root}/exec --pidfile={root}/docker.pid "
                        f"-H unix://{root}/docker.sock --config-file={root}/daemon.json "
                        "--bridge=none --iptables=false --ip-masq=false",
    }
    Path(f"{root}/daemon.json").write_text("{}")
    script = str(REPO / "deploy/host/ensure-docker.sh")

    def ensure(*args: str, wrapper: tuple[str, ...] = ()) -> str:
        done = subprocess.run([*wrapper, "bash", script, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def runtimes() -> dict[str, Any]:
        info = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], env=env, capture_output=True,
                              text=True, check=True, timeout=30)
        return dict(json.loads(info.stdout))

    try:
        # (--bridge=none makes dockerd delete the "docker0" of its network namespace: its own here)
        assert "starting dockerd" in ensure(wrapper=("unshare", "--net"))
        pid = Path(f"{root}/docker.pid").read_text().strip()
        assert "runsc" not in runtimes() and json.loads(Path(f"{root}/daemon.json").read_text()) == {}

        reloaded = ensure("--runsc")
        assert "registered runsc" in reloaded and "SIGHUP" in reloaded, reloaded
        assert Path(f"{root}/docker.pid").read_text().strip() == pid  # the same engine, never restarted
        assert runtimes()["runsc"] == {"path": "/usr/bin/runsc",
                                       "runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=all"]}

        before = Path(f"{root}/daemon.json").read_bytes()
        assert ensure("--runsc").strip().endswith("docker engine is up, with runsc")
        assert Path(f"{root}/daemon.json").read_bytes() == before
    finally:
        pidfile = Path(f"{root}/docker.pid")
        if pidfile.exists():
            engine = os.pidfd_open(int(pidfile.read_text().strip()))  # (no signal can reach a reused pid)
            try:
                signal.pidfd_send_signal(engine, signal.SIGTERM)
                assert select.select([engine], [], [], 60)[0], "the test's engine did not stop"  # (readable: exited)
            finally:
                os.close(engine)
        shutil.rmtree(root, ignore_errors=True)
