"""The docker provisioner against a real engine: lifecycle, the hardening (inspected and proven from inside), isolation.

Each test using ``docker_gateway`` runs under both runtimes (runc and gVisor: ``docker_gateway_of_each_runtime``).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.provisioners.docker import LABEL_INSTANCE, LABEL_OWNER, LABEL_SANDBOX, container_name
from gateway.provisioners.isolation import HOST_RUN_DIR, HOST_TASKS_BASE, HOST_TASKS_PER_PID
from tests.clients.proxy import CuttableProxy
from tests.gateways import KEYS, InProcessGateway, create, inside, run
from tests.provisioned import (  # noqa: F401  (fixtures)
    container_of,
    containers_labelled,
    docker_as_the_gateway,
    docker_gateway_of_each_runtime,
    engine_of,
    runtime,
)
from tests.waiting import until, until_running, until_status

pytestmark = pytest.mark.docker


# -- lifecycle ---------------------------------------------------------------------------------


async def test_create_execute_delete_leaves_no_container(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any
) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    assert sandbox["status"] == "running"
    assert sandbox["provisioner"] == "docker"
    assert sandbox["image"] == engine_of(docker_gateway).image

    container = container_of(docker_client, sid)
    assert container.status == "running"
    assert container.labels[LABEL_SANDBOX] == sid
    assert container.labels[LABEL_OWNER] == "alice"
    assert container.labels[LABEL_INSTANCE] == engine_of(docker_gateway).instance_id

    assert (await run(alice, sid, "x = 41"))["status"] == "completed"
    assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "42"}

    assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
    assert containers_labelled(docker_client, f"{LABEL_SANDBOX}={sid}") == []
    assert not docker_gateway.app.launcher.sandbox_dir(sid).exists()
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "terminated"


async def test_rich_output_and_interrupt_reach_the_kernel(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    plot = await run(alice, sid, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()")
    assert plot["status"] == "completed", plot
    assert any("image/png" in o.get("data", {}) for o in plot["outputs"])

    await run(alice, sid, "kept = 'yes'")
    pending = await until_running(alice, sid, "import time\ntime.sleep(100)", timeout=60)
    interrupt = await alice.post(f"/api/v1/sandboxes/{sid}/interrupt")
    assert interrupt.status_code == 200 and interrupt.json()["id"] == sid, interrupt.text
    interrupted = await pending  # the interrupt ends it, not the timeout
    assert interrupted["status"] == "cancelled", interrupted
    assert interrupted["error"]["ename"] == "KeyboardInterrupt"
    assert (await run(alice, sid, "kept"))["result"] == {"text/plain": "'yes'"}


async def test_timeout_interrupts_a_subprocess_too(alice: httpx.AsyncClient) -> None:
    """SIGINT goes to the kernel's whole process group (tini -g), as with a local kernel."""
    sid = (await create(alice))["id"]
    timed_out = await run(alice, sid, "import subprocess\nsubprocess.run(['sleep', '100'])", timeout=2)
    assert timed_out["status"] == "timed_out"
    assert await inside(alice, sid, "import os, json\nprint(json.dumps(sorted("
                                    "open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') "
                                    "if p.isdigit())))") == ["python3", "tini"]


# -- hardening: what the engine was told -------------------------------------------------------


async def test_container_is_created_hardened(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, docker_client: Any, runtime: str
) -> None:
    sandbox = await create(
        alice, resources={"cpu": 0.5, "memory_mb": 300, "disk_mb": 50, "pids": 100}, env={"GREETING": "hi"}
    )
    attrs = container_of(docker_client, sandbox["id"]).attrs
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["Privileged"] is False
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not any(opt.startswith("seccomp=unconfined") for opt in host["SecurityOpt"])
    assert host["NetworkMode"] == "none"
    assert not host.get("PortBindings")
    assert host["PublishAllPorts"] is False
    assert host["Memory"] == 300 << 20
    assert host["MemorySwap"] == 300 << 20
    if runtime == "runc":
        assert host["Runtime"] == "runc" and host["PidsLimit"] == 100
    else:  # the sandbox's own limit is its kernel's RLIMIT_NPROC; the host's a budget for the Sentry's tasks
        assert host["Runtime"] == "runsc" and host["PidsLimit"] == HOST_TASKS_BASE + HOST_TASKS_PER_PID * 100
        assert host["Ulimits"] == [{"Name": "nproc", "Soft": 100, "Hard": 100}]
    assert host["NanoCpus"] == 500_000_000
    assert host["IpcMode"] == "private"
    assert host["OomKillDisable"] is False
    assert host["AutoRemove"] is False
    assert not host.get("Binds")
    tmpfs = host["Tmpfs"]
    if runtime == "runc":
        assert not host.get("Mounts") and attrs["Mounts"] == []  # nothing of the host's
        assert set(tmpfs) == {"/tmp", "/home/sandbox", "/run/code-gateway"}
    else:  # only the gateway's own tmpfs for the kernel's sockets (test_isolation proves what it is)
        run_dir = str(docker_gateway.app.launcher.sandbox_dir(sandbox["id"]) / HOST_RUN_DIR)
        assert [(m["Type"], m["Source"], m["Destination"]) for m in attrs["Mounts"]] == [
            ("bind", run_dir, "/run/code-gateway")]
        assert set(tmpfs) == {"/tmp", "/home/sandbox"}
    assert host["LogConfig"]["Config"]["max-size"]
    assert "size=50m" in tmpfs["/tmp"] and "size=50m" in tmpfs["/home/sandbox"]
    assert "uid=1000" in tmpfs["/home/sandbox"] and "mode=0700" in tmpfs["/home/sandbox"]
    assert attrs["Config"]["User"] == "1000:1000"
    assert not attrs["Config"].get("ExposedPorts")
    assert attrs["Config"]["Entrypoint"][:3] == ["tini", "-g", "--"]
    assert attrs["NetworkSettings"]["Ports"] in ({}, None)
    names = {entry.partition("=")[0] for entry in attrs["Config"]["Env"]}
    assert "GREETING" in names
    assert not any(name.startswith("GATEWAY_") for name in names)
    assert not any(key in entry for entry in attrs["Config"]["Env"] for key in KEYS.values())


# -- hardening: proven from inside -------------------------------------------------------------


async def test_inside_the_kernel_is_unprivileged(alice: httpx.AsyncClient, docker_client: Any, runtime: str) -> None:
    sid = (await create(alice))["id"]
    facts = await inside(alice, sid, """
import ctypes, os, json
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
no_new_privs = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS (gVisor's status has no line)
print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),
                  'cap_eff': status['CapEff'].strip(), 'cap_prm': status['CapPrm'].strip(),
                  'cap_bnd': status['CapBnd'].strip(), 'no_new_privs': str(no_new_privs),
                  'seccomp': status['Seccomp'].strip(), 'pid1': open('/proc/1/comm').read().strip()}))
""")
    assert facts["uid"] == facts["euid"] == 1000 and facts["gid"] == 1000
    assert int(facts["cap_eff"], 16) == 0 and int(facts["cap_prm"], 16) == 0 and int(facts["cap_bnd"], 16) == 0
    assert facts["no_new_privs"] == "1"
    if runtime == "runc":
        assert facts["seccomp"] == "2"  # a seccomp filter (Docker's default profile) is active
    else:
        # gVisor's kernel answers the sandbox's system calls itself (Docker's profile is not loaded
        # in it: runsc's --oci-seccomp breaks thread creation in this version); the host kernel sees
        # only the Sentry, unprivileged and under runsc's own seccomp filter.
        sentry = container_of(docker_client, sid).attrs["State"]["Pid"]
        host_status = dict(line.split(":", 1) for line in Path(f"/proc/{sentry}/status").read_text().splitlines())
        assert host_status["Seccomp"].strip() == "2" and host_status["NoNewPrivs"].strip() == "1"
        assert host_status["Uid"].split() == ["65534"] * 4  # nobody
    assert facts["pid1"] == "tini"
    # No privilege to gain: setuid fails, su/sudo cannot help.
    denied = await run(alice, sid, "import os\nos.setuid(0)")
    assert denied["status"] == "failed" and denied["error"]["ename"] == "PermissionError"


async def test_root_filesystem_is_read_only(alice: httpx.AsyncClient, runtime: str) -> None:
    sid = (await create(alice))["id"]
    errors = await inside(alice, sid, """
import json
result = {}
for path in ['/usr/x', '/etc/x', '/x', '/opt/code-gateway/kernels/x', '/var/tmp/x']:
    try:
        open(path, 'a').close()
        result[path] = 0
    except OSError as exc:
        result[path] = exc.errno
print(json.dumps(result))
""")
    # EROFS; gVisor checks the permission first (EACCES) where the sandbox's user could not write
    # anyway, and answers EROFS where only read-only stops it (/var/tmp is world-writable).
    assert errors.pop("/var/tmp/x") == 30
    assert errors == dict.fromkeys(["/usr/x", "/etc/x", "/x", "/opt/code-gateway/kernels/x"],
                                   30 if runtime == "runc" else 13)
    # Where a sandbox may write: its home (the working directory) and /tmp.
    assert await inside(alice, sid, """
import json, os
open('/home/sandbox/a.txt', 'w').write('a'); open('/tmp/b.txt', 'w').write('b')
print(json.dumps([os.getcwd(), open('a.txt').read(), open('/tmp/b.txt').read()]))
""") == ["/home/sandbox", "a", "b"]


async def test_no_network_and_the_gateway_port_is_unreachable(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    port = docker_gateway.app.bound_port
    facts = await inside(alice, sid, f"""
import json, os, socket
routes = open('/proc/net/route').read().splitlines()[1:]
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()
    reached = True
except OSError:
    reached = False
print(json.dumps({{'net': sorted(os.listdir('/sys/class/net')),
                  'ifaces': sorted(name for _, name in socket.if_nameindex()),
                  'routes': routes, 'reached': reached}}))
""")
    assert facts["net"] == ["lo"] and facts["ifaces"] == ["lo"]
    assert facts["routes"] == []  # no IPv4 route at all: nothing outside can be addressed
    assert facts["reached"] is False


async def test_network_only_where_the_operator_allows_it(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data") as local_only:  # no --allow-network (local: the policy is the same)
        async with local_only.client("alice") as client:
            refused = await client.post("/api/v1/sandboxes", json={"resources": {"network": True}})
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "network_not_allowed"
    async with InProcessGateway(tmp_path / "data2", "--allow-network=true", provisioner="docker") as allowing:
        async with allowing.client("alice") as client:
            with_network = await create(client, resources={"network": True})
            without = await create(client)
            assert container_of(docker_client, with_network["id"]).attrs["HostConfig"]["NetworkMode"] == "bridge"
            assert container_of(docker_client, without["id"]).attrs["HostConfig"]["NetworkMode"] == "none"
            # An interface beyond loopback exists; no traffic is sent anywhere.
            ifaces = await inside(client, with_network["id"], "import os, json\nprint(json.dumps(os.listdir('/sys/class/net')))")
            assert "lo" in ifaces and len(ifaces) > 1


async def test_gateway_files_and_environment_are_invisible(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice, env={"PUBLIC": "yes"}))["id"]
    data_dir = docker_gateway.app.data_dir
    runtime_dir = str(docker_gateway.app.launcher.runtime_dir)
    facts = await inside(alice, sid, f"""
import json, os
print(json.dumps({{'env': dict(os.environ),
                  'data_dir': os.path.exists({data_dir!r}), 'runtime_dir': os.path.exists({runtime_dir!r}),
                  'mounts': open('/proc/self/mountinfo').read(),
                  'run': sorted(os.listdir('/run/code-gateway'))}}))
""")
    env = facts["env"]
    assert env["PUBLIC"] == "yes"
    assert not [name for name in env if name.startswith("GATEWAY_")] and "CODE_GATEWAY_CONNECTION" not in env
    assert not [name for name in env if any(key in env[name] for key in KEYS.values())]
    assert facts["data_dir"] is False and facts["runtime_dir"] is False
    assert runtime_dir not in facts["mounts"] and str(data_dir) not in facts["mounts"]
    assert facts["run"] == ["connection.json", "k-1", "k-2", "k-3", "k-4", "k-5"]


async def test_sandboxes_cannot_see_each_other(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    a = (await create(alice))["id"]
    b = (await create(bob))["id"]
    await run(alice, a, """
import subprocess
open('/home/sandbox/secret-a.txt', 'w').write('a'); open('/tmp/secret-a.txt', 'w').write('a')
marker = subprocess.Popen(['sleep', '300'])
""")
    seen = await inside(bob, b, """
import json, os
cmdlines = [open(f'/proc/{p}/cmdline', 'rb').read().decode(errors='replace')
            for p in os.listdir('/proc') if p.isdigit()]
print(json.dumps({'home': os.listdir('/home/sandbox'), 'tmp': os.listdir('/tmp'),
                  'sockets': sorted(os.listdir('/run/code-gateway')), 'cmdlines': cmdlines}))
""")
    assert "secret-a.txt" not in seen["home"] and "secret-a.txt" not in seen["tmp"]
    assert not any("sleep" in cmdline for cmdline in seen["cmdlines"])
    assert len(seen["cmdlines"]) == 2  # tini and b's own kernel
    assert seen["sockets"] == ["connection.json", "k-1", "k-2", "k-3", "k-4", "k-5"]
    # a's key is not b's: b's connection file names only b's sockets and key.
    own = await inside(bob, b, "print(open('/run/code-gateway/connection.json').read())")
    assert own["ip"] == "/run/code-gateway/k"


# -- what the operator may configure -----------------------------------------------------------


async def test_the_operators_docker_options_reach_the_containers(tmp_path: Any, docker_client: Any) -> None:
    """``docker_host``, ``instance_id``, ``user``, ``network`` and ``run_options``, each seen on the
    container and from inside it; and /ready follows the engine (reached through a proxy we cut)."""
    instance = f"test-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(f"code-gateway-test-{instance}", internal=True)  # nothing outside
    try:
        async with CuttableProxy(target_path="/var/run/docker.sock", path=tmp_path / "engine.sock") as engine_proxy, \
                InProcessGateway(tmp_path / "data", "--allow-network=true",
                                 f"--DockerProvisioner.docker_host={engine_proxy.url}",
                                 f"--DockerProvisioner.instance_id={instance}",
                                 "--DockerProvisioner.user=1234:1234",
                                 f"--DockerProvisioner.network={network.name}",
                                 "--DockerProvisioner.run_options=hostname=from-run-options",
                                 "--DockerProvisioner.run_options=shm_size=32m",
                                 provisioner="docker") as gateway, \
                gateway.client("alice") as alice, gateway.client(None) as anonymous:
            assert (await anonymous.get("/health")).json()["engine"]["instance"] == instance
            networked = await create(alice, resources={"network": True})
            isolated = await create(alice)
            assert engine_proxy.connections > 0  # the gateway reached the engine at docker_host
            for sandbox in (networked, isolated):
                container = container_of(docker_client, sandbox["id"])
                assert container.labels[LABEL_INSTANCE] == instance
                assert container.attrs["Config"]["User"] == "1234:1234"
            assert container_of(docker_client, networked["id"]).attrs["HostConfig"]["NetworkMode"] == network.name
            assert container_of(docker_client, isolated["id"]).attrs["HostConfig"]["NetworkMode"] == "none"
            facts = await inside(alice, networked["id"], """
import json, os, socket
shm = os.statvfs('/dev/shm')
print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'home_uid': os.stat('.').st_uid,
                  'hostname': socket.gethostname(), 'shm': shm.f_blocks * shm.f_frsize,
                  'ifaces': sorted(os.listdir('/sys/class/net'))}))
""")
            assert facts == {"uid": 1234, "gid": 1234, "home_uid": 1234, "hostname": "from-run-options",
                             "shm": 32 << 20, "ifaces": ["eth0", "lo"]}
            # Files are reached as that user too.
            assert (await alice.put(f"/api/v1/sandboxes/{isolated['id']}/files/mine", content=b"m")).status_code == 201
            assert await inside(alice, isolated["id"], "import json, os\nprint(os.stat('mine').st_uid)") == 1234

            assert (await anonymous.get("/ready")).json() == {"ready": True, "problems": []}
            engine_proxy.down()  # the engine goes away
            # The calls fail at once; the event stream's reader notices its loss a moment later.
            unready = await until(lambda: anonymous.get("/ready"),
                                  lambda r: r.status_code == 503 and len(r.json()["problems"]) == 2,
                                  what="/ready to say 503 for both reasons", timeout=30)
            problems = unready.json()["problems"]
            assert unready.json()["ready"] is False
            assert problems[0] == "the Docker engine's event stream is not connected"
            assert problems[1].startswith("the Docker engine does not answer"), problems
            engine_proxy.up()  # and comes back: the event stream reconnects by itself
            ready = await until(lambda: anonymous.get("/ready"), lambda r: r.status_code == 200,
                                what="/ready to recover", timeout=30)
            assert ready.json() == {"ready": True, "problems": []}
            assert (await run(alice, isolated["id"], "1 + 1"))["result"] == {"text/plain": "2"}
        assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}") == []
    finally:
        for leftover in containers_labelled(docker_client, f"{LABEL_INSTANCE}={instance}"):
            leftover.remove(force=True)
        network.remove()


# -- the engine: one event stream, no thread per sandbox ---------------------------------------


async def test_waiting_for_many_containers_costs_no_thread_each(
    docker_gateway: InProcessGateway, alice: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(docker_gateway)
    in_flight = 0
    original = engine.call

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight
        in_flight += 1
        try:
            return await original(fn, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(engine, "call", counting)
    ids = [s["id"] for s in await asyncio.gather(*(create(alice) for _ in range(6)))]
    assert docker_gateway.app.sandboxes.counts()["live"] == 6
    containers = {container_of(engine.client, sid).id for sid in ids}
    # Every kernel is watched (a waiter on its container's death) while no docker call, so no
    # thread, is blocked on any of them.
    await until(lambda: (containers <= set(engine._waiters), in_flight), lambda seen: seen == (True, 0),
                what="six watched containers and no docker call in flight", timeout=30)
    assert [t.name for t in threading.enumerate()].count("docker-events") == 1
    # ...and a death is still noticed at once.
    container_of_first = engine.client.containers.get(container_name(ids[0]))
    await engine.call(container_of_first.kill)
    await until_status(alice, ids[0], "failed")


async def test_event_stream_reconnects(docker_gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    engine = engine_of(docker_gateway)
    sid = (await create(alice))["id"]
    assert engine.events is not None and engine.events.connected
    engine.events._close_stream()  # as if the engine connection broke
    await until(lambda: engine.events is not None and engine.events.connected and engine.events._stream is not None,
                what="the event stream to reconnect", timeout=20)
    async with docker_gateway.client(None) as anonymous:
        assert (await anonymous.get("/health")).json()["engine"]["events_connected"] is True
    await engine.call(engine.client.api.kill, container_name(sid))
    sandbox = await until_status(alice, sid, "failed")
    assert sandbox["status_reason"] == "sandbox_died"


async def test_missing_image_is_reported(tmp_path: Any, docker_client: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--image=code-gateway/no-such-image:0", provisioner="docker") as gw:
        async with gw.client(None) as anonymous:
            health = (await anonymous.get("/health")).json()
        assert health["status"] == "degraded"
        assert any("no-such-image" in w and "make images" in w for w in health["warnings"])
        async with gw.client("alice") as client:
            refused = await client.post("/api/v1/sandboxes", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "sandbox_start_failed", refused.text
        assert "no-such-image" in refused.json()["error"]["message"]
        assert "make images" in refused.json()["error"]["message"]
        assert containers_labelled(docker_client, f"{LABEL_INSTANCE}={engine_of(gw).instance_id}") == []
        async with gw.client(None) as anonymous:
            ready = await anonymous.get("/ready")  # sandboxes cannot start here: a load balancer should know
        assert ready.status_code == 503
        assert ready.json()["problems"] == ["the sandbox image code-gateway/no-such-image:0 is missing: "
                                            "build it with `make images`"]
