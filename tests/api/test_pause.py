"""Pause and resume over real HTTP on both provisioners: files and variables kept on the gateway's disk."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway import jsonbytes
from gateway.sandboxes import reports
from gateway.sandboxes.reports import MAX_REPORT_CHARS, MAX_TEXT_CHARS
from tests.api.test_pool import NEVER_SATURATED
from tests.gateways import InProcessGateway, auth
from tests.provisioned import PROVISIONERS, containers_labelled, create, gateway_for, run
from tests.waiting import HOLD, pool_state, release, until, until_running, until_status

STATE = """
import socket
import pandas as pd
from math import sqrt
x = 41
df = pd.DataFrame({"a": [1, 2, 3]})
def double(v):
    return 2 * v
same = df
conn = socket.socket()
"""


def saved_state(gateway: InProcessGateway, sandbox_id: str) -> Path:
    return Path(gateway.app.data_dir) / "paused" / sandbox_id


def lost_names(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in report["lost"]}


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_idle_pause_then_auto_resume_restores_files_and_variables(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        await idle_pause_then_auto_resume(gateway, alice)


async def idle_pause_then_auto_resume(gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    before = await run(alice, sid, STATE)
    assert before["status"] == "completed", before
    counted = await run(alice, sid, "x")
    assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/data/in.csv", content=b"a,b\n1,2\n")).status_code == 201
    # Idle from now on: one second without activity pauses it.
    assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"idle_timeout": 1})).status_code == 200
    paused = await until_status(alice, sid, "paused")
    assert paused["status_reason"] == "idle"
    assert sorted(p.name for p in saved_state(gateway, sid).iterdir()) == ["files.tar.gz", "state.json", "variables.dill.gz"]
    assert {"x", "df", "double", "same", "sqrt"} <= set(paused["snapshot"]["variables"])
    assert paused["snapshot"]["modules"] == {"socket": "socket", "pd": "pandas"}
    if gateway.app.launcher.resolved == "docker":  # the container is gone, not stopped
        import docker

        client = docker.from_env()
        await until(lambda: containers_labelled(client, f"code-gateway.sandbox={sid}"), lambda found: found == [],
                    what="the paused sandbox's container to be removed")
        client.close()
    assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"idle_timeout": 600})).status_code == 200

    after = await run(alice, sid, "print(x + 1, double(x), df.a.sum(), same is df, sqrt(16), pd.__name__)\n"
                                  "open('data/in.csv').read()")
    assert after["status"] == "completed", after
    assert after["stdout"] == "42 82 6 True 4.0 pandas\n"
    assert after["result"] == {"text/plain": "'a,b\\n1,2\\n'"}
    assert after["execution_count"] == counted["execution_count"] + 1  # the kernel's count goes on

    resumed = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert resumed["status"] == "running" and resumed["snapshot"] is None
    restore = resumed["restore"]
    assert restore["files"] >= 1 and restore["at"].endswith("Z")
    assert {"x", "df", "double", "same", "sqrt", "pd", "socket"} <= set(restore["variables"])
    assert lost_names(restore)["conn"]["type"] == "socket.socket"
    assert "socket" in lost_names(restore)["conn"]["reason"]
    assert resumed["execution_count"] == 3
    history = (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
    assert [e["id"] for e in history] == [before["id"], counted["id"], after["id"]]
    assert not saved_state(gateway, sid).exists()  # the saved state goes once restored


async def test_without_auto_resume_work_on_a_paused_sandbox_is_409(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice, auto_resume=False))["id"]
    await run(alice, sid, "x = 1")
    paused = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["status_reason"] is None
    for response in (
        await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "x"}),
        await alice.get(f"/api/v1/sandboxes/{sid}/files"),
        await alice.post(f"/api/v1/sandboxes/{sid}/restart"),
    ):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "sandbox_paused"
        assert "resume" in response.json()["error"]["message"]
    interrupted = await alice.post(f"/api/v1/sandboxes/{sid}/interrupt")
    assert interrupted.status_code == 409 and interrupted.json()["error"]["code"] == "sandbox_paused"
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "paused"
    resumed = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert (await run(alice, sid, "x + 1"))["result"] == {"text/plain": "2"}


async def test_a_file_operation_resumes_a_paused_sandbox(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/a.txt", content=b"A")).status_code == 201
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
    download = await alice.get(f"/api/v1/sandboxes/{sid}/files/a.txt")
    assert download.status_code == 200 and download.content == b"A"
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["restore"]["files"] == 1


async def test_pause_refuses_a_busy_sandbox_and_is_idempotent(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    held = await until_running(alice, sid, HOLD)
    busy = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "sandbox_busy"
    await release(alice, sid)
    assert (await held)["status"] == "completed"
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
    again = await alice.post(f"/api/v1/sandboxes/{sid}/pause")  # pausing a paused sandbox changes nothing
    assert again.status_code == 200 and again.json()["status"] == "paused"


async def test_delete_of_a_paused_sandbox_removes_its_saved_state(
    gateway: InProcessGateway, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    await run(alice, sid, "x = 1")
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    assert saved_state(gateway, sid).is_dir()
    for response in (await bob.post(f"/api/v1/sandboxes/{sid}/resume"), await bob.post(f"/api/v1/sandboxes/{sid}/pause")):
        assert response.status_code == 404 and response.json()["error"]["code"] == "sandbox_not_found"
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
    ended = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert (ended["status"], ended["status_reason"], ended["snapshot"]) == ("terminated", "deleted", None)
    assert not saved_state(gateway, sid).exists()
    gone = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "sandbox_not_running"


async def test_a_paused_sandbox_expires_like_any_other(gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    assert (await alice.patch(f"/api/v1/sandboxes/{sid}", json={"lifetime": 1})).status_code == 200
    ended = await until_status(alice, sid, "terminated")
    assert ended["status_reason"] == "expired"
    assert not saved_state(gateway, sid).exists()


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_the_saved_state_is_bounded_by_disk_mb(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice, resources={"disk_mb": 4}))["id"]
        code = "import os\nbig = os.urandom(6 << 20)\nsmall = [1, 2, 3]\nopen('f.bin', 'wb').write(os.urandom(1 << 20))"
        assert (await run(alice, sid, code))["status"] == "completed"
        paused = (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()
        assert paused["status"] == "paused", paused
        assert "small" in paused["snapshot"]["variables"]
        assert "disk_mb" in lost_names(paused["snapshot"])["big"]["reason"]
        on_disk = sum(f.stat().st_size for f in saved_state(gateway, sid).iterdir())
        assert on_disk == paused["snapshot"]["bytes"] <= 4 << 20
        after = await run(alice, sid, "len(open('f.bin', 'rb').read()), small, 'big' in globals()")
        assert after["result"] == {"text/plain": "(1048576, [1, 2, 3], False)"}


#: A sandbox whose pause has countless things to report, each with a long name: 20,000 generators
#: (never kept, each lost), 5,000 variables and 2,000 module aliases (kept), 150 FIFOs in a
#: directory 3,000 characters deep (not files: skipped). Listed in full, its reports would take
#: megabytes, stored in its record and answered with every GET of it.
COUNTLESS = """
import os
_long = "x" * 200
for _n in range(20_000):
    globals()[f"gen{_n}_{_long}"] = (v for v in ())
for _n in range(5_000):
    globals()[f"kept{_n}_{_long}"] = _n
for _n in range(2_000):
    globals()[f"mod{_n}_{_long}"] = os
_deep = "/".join(["d" * 200] * 15)
os.makedirs(_deep)
for _n in range(150):
    os.mkfifo(f"{_deep}/fifo{_n}_" + "p" * 200)
"""


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_the_reports_of_a_sandbox_with_countless_losses_are_bounded_and_it_resumes_whole(
    provisioner: str, tmp_path: Any
) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        assert (await run(alice, sid, COUNTLESS, timeout=300))["status"] == "completed"
        pausing = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
        assert pausing.status_code == 200, pausing.text[:1000]
        report = pausing.json()["snapshot"]
        assert len(jsonbytes.dumps(report)) <= MAX_REPORT_CHARS and len(pausing.content) < MAX_REPORT_CHARS + 4096
        assert report["truncated"] is True and report["files"] == 0
        assert reports.total(report, "lost") == 20_000 + 150
        assert reports.total(report, "variables") == 5_000 and reports.total(report, "modules") == 2_001  # (and os)
        assert all(len(entry["name"]) <= MAX_TEXT_CHARS for entry in report["lost"])
        assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["snapshot"] == report  # (as stored)
        listed = await alice.get("/api/v1/sandboxes")
        assert len(listed.content) < MAX_REPORT_CHARS + 4096

        resuming = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
        assert resuming.status_code == 200, resuming.text[:1000]
        restore = resuming.json()["restore"]
        assert len(jsonbytes.dumps(restore)) <= MAX_REPORT_CHARS and restore["truncated"] is True
        assert reports.total(restore, "lost") == 20_000 + 150  # (those of the pause, still counted)
        assert reports.total(restore, "variables") == 5_000 + 2_001
        # What the kernel needs again was kept whole, whatever the reports show.
        counted = await run(alice, sid, "import sys\n_names = list(globals())\n"
                                        "(sum(n.startswith('kept') for n in _names), sum(n.startswith('mod') for n in _names),"
                                        " globals()['kept4999_' + 'x' * 200], globals()['mod1999_' + 'x' * 200] is os)")
        assert counted["result"] == {"text/plain": "(5000, 2000, 4999, True)"}, counted


async def test_a_state_saved_before_state_json_resumes_from_its_manifest(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    assert (await run(alice, sid, "import math as m\nx = 41"))["status"] == "completed"
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["snapshot"]["modules"] == {"m": "math"}
    (saved_state(gateway, sid) / "state.json").unlink()  # (as a gateway before it saved one)
    assert (await run(alice, sid, "m.sqrt(x + 8)"))["result"] == {"text/plain": "7.0"}


@pytest.mark.docker
async def test_links_in_the_sandbox_stay_links_and_are_never_followed_on_the_host(
    tmp_path: Any, docker_client: Any
) -> None:
    """The attack: links to the host's secrets in the working directory, hoping the pause reads them."""
    async with gateway_for("docker", tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        data_dir = Path(gateway.app.data_dir).resolve()
        code = (f"import os\nos.symlink('/etc/shadow', 'shadow')\nos.symlink({str(data_dir)!r}, 'data')\n"
                "os.symlink('/proc/1/root', 'hostroot')\nos.mkdir('d')\nos.symlink('/etc', 'd/etc')")
        assert (await run(alice, sid, code))["status"] == "completed"
        paused = (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()
        assert paused["status"] == "paused", paused
        state = saved_state(gateway, sid)
        assert sorted(p.name for p in state.iterdir()) == ["files.tar.gz", "state.json"]  # no variables, nothing else
        with tarfile.open(state / "files.tar.gz", "r:gz") as archive:  # (the test looks inside; the gateway never does)
            members = {m.name: m for m in archive.getmembers()}
        assert set(members) == {"shadow", "data", "hostroot", "d", "d/etc"}
        assert all(m.issym() for name, m in members.items() if name != "d")
        assert members["shadow"].linkname == "/etc/shadow" and members["shadow"].size == 0
        resumed = await run(alice, sid, "[os.readlink(p) for p in ('shadow', 'data', 'hostroot', 'd/etc')]")
        assert json.loads(resumed["result"]["text/plain"].replace("'", '"')) == [
            "/etc/shadow", str(data_dir), "/proc/1/root", "/etc"]


async def test_connecting_a_jupyter_channel_resumes_a_paused_kernel(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    await run(alice, sid, "x = 5")
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    kernels = (await alice.get("/api/kernels")).json()
    assert [(k["id"], k["execution_state"]) for k in kernels] == [(sid, "idle")]
    url = gateway.url.replace("http", "ws") + f"/api/kernels/{sid}/channels"
    async with websockets.connect(url, additional_headers=auth("alice")):
        sandbox = await until_status(alice, sid, "running")
        assert "x" in sandbox["restore"]["variables"]
        # While a Jupyter client is connected the kernel cannot go: its channels would hang.
        await until(lambda: gateway.app.sandboxes.kernels.connections(sid), bool, what="the channel counted")
        refused = await alice.post(f"/api/v1/sandboxes/{sid}/pause")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "sandbox_busy"
        assert "Jupyter client" in refused.json()["error"]["message"]


async def test_a_failed_resume_leaves_the_sandbox_paused_with_its_state(
    gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    await run(alice, sid, "x = 5")
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    files = saved_state(gateway, sid) / "files.tar.gz"
    good = files.read_bytes()
    files.write_bytes(b"not an archive")  # (the gateway's own disk, damaged)
    broken = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
    assert broken.status_code == 503 and broken.json()["error"]["code"] == "sandbox_start_failed"
    assert "stays paused" in broken.json()["error"]["message"]
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "paused"
    files.write_bytes(good)
    assert (await run(alice, sid, "x"))["result"] == {"text/plain": "5"}


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_resume_takes_a_warm_pool_kernel_when_one_fits(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path, "--pool-size=1", NEVER_SATURATED) as gateway, \
            gateway.client("alice") as alice, \
            gateway.client(None) as anonymous:
        await pool_state(anonymous, ready=1)
        sid = (await create(alice))["id"]
        await run(alice, sid, "x = 5")
        assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/a.txt", content=b"A")).status_code == 201
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
        claimed = (await pool_state(anonymous, ready=1))["claimed"]
        resumed = await alice.post(f"/api/v1/sandboxes/{sid}/resume")
        assert resumed.status_code == 200, resumed.text
        assert (await anonymous.get("/health")).json()["pool"]["claimed"] == claimed + 1
        assert 'code_gateway_sandbox_start_seconds_count{source="resume_pool"} 1.0' in (await anonymous.get("/metrics")).text
        # The same id, its state, its files, tools and restarts, on the pooled kernel.
        assert (await run(alice, sid, "x + 1, open('a.txt').read()"))["result"] == {"text/plain": "(6, 'A')"}
        assert (await alice.get(f"/api/v1/sandboxes/{sid}/files/a.txt")).content == b"A"
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/restart")).json()["status"] == "running"
        assert (await run(alice, sid, "'x' in globals()"))["result"] == {"text/plain": "False"}
        assert (await alice.put(f"/api/v1/sandboxes/{sid}/files/b.txt", content=b"B")).status_code == 201
        assert (await run(alice, sid, "open('b.txt').read()"))["result"] == {"text/plain": "'B'"}
        # And it pauses and resumes again from there.
        await run(alice, sid, "y = 7")
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
        assert (await run(alice, sid, "y"))["result"] == {"text/plain": "7"}
