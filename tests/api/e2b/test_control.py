"""E2B's control plane through the real SDK: create, info, list, timeout, pause, connect, metrics, kill.

Bad input gets E2B's answers: a key not of E2B's form and an unknown key are 401
(``AuthenticationException``), an unknown template 404, an unknown sandbox and someone else's
404 (``SandboxNotFoundException``), and what the gateway does not do says so.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Iterator

import httpx
import nbformat
import pytest
from e2b import AuthenticationException, SandboxException, SandboxNotFoundException, SandboxQuery, SandboxState
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.api.e2b.conftest import E2B_KEYS
from tests.gateways import GatewayProcess

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600, metadata={"suite": "control", "chat": "c-1"}, envs={"GREETING": "hello"})
    yield created
    created.kill()


def test_create_info_and_our_api_agree(sandbox: Sandbox, ours: httpx.Client) -> None:
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.template_id == "code-interpreter-v1"
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"suite": "control", "chat": "c-1"}
    assert info.cpu_count >= 1 and info.memory_mb > 0
    lifetime = (info.end_at - info.started_at).total_seconds()
    assert 590 <= lifetime <= 610  # E2B's timeout is our lifetime
    ran = sandbox.run_code("import os; os.environ['GREETING']")
    assert ran.text == "hello"
    # The same sandbox on our own API: owner, template, metadata, its history and notebook.
    mine = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}").json()
    assert (mine["owner"], mine["template"], mine["metadata"]["chat"]) == ("alice", "code-interpreter-v1", "c-1")
    assert "access_token" not in mine
    history = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/executions").json()["executions"]
    assert "os.environ['GREETING']" in [e["code"] for e in history][-1]
    notebook = nbformat.reads(ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/notebook").text, as_version=4)
    assert any("GREETING" in cell.source for cell in notebook.cells)


def test_list_pages_and_filters(sandbox: Sandbox) -> None:
    other = Sandbox.create(template="base", timeout=120, metadata={"suite": "control", "chat": "c-2"})
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": "control"}), limit=1)
        pages = []
        while paginator.has_next:
            pages.append([s.sandbox_id for s in paginator.next_items()])
        assert len(pages) == 2 and all(len(page) == 1 for page in pages)
        assert {pages[0][0], pages[1][0]} == {sandbox.sandbox_id, other.sandbox_id}
        assert pages[0] == [other.sandbox_id]  # newest first
        only = Sandbox.list(query=SandboxQuery(metadata={"chat": "c-2"})).next_items()
        assert [s.sandbox_id for s in only] == [other.sandbox_id]
        assert only[0].template_id == "base"
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED], metadata={"suite": "control"}))
        assert paused.next_items() == []
    finally:
        assert other.kill()
    assert other.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]


def test_set_timeout_moves_the_end(sandbox: Sandbox) -> None:
    sandbox.set_timeout(1200)
    info = sandbox.get_info()
    left = (info.end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert 1150 <= left <= 1210
    # connect() only ever extends it.
    Sandbox.connect(sandbox.sandbox_id, timeout=60)
    assert sandbox.get_info().end_at == info.end_at


def test_metrics(sandbox: Sandbox) -> None:
    sandbox.run_code("blob = bytearray(30 << 20)")
    [metric] = sandbox.get_metrics()
    assert metric.mem_used > 30 << 20 and metric.mem_total >= metric.mem_used
    assert metric.cpu_count >= 1 and 0 <= metric.cpu_used_pct <= 100
    assert metric.disk_total > 0


def test_pause_and_connect_resume_with_state(e2b_gateway: GatewayProcess) -> None:
    sandbox = Sandbox.create(timeout=300)
    try:
        sandbox.run_code("kept = 41")
        assert sandbox.pause() is True
        assert sandbox.get_info().state == SandboxState.PAUSED
        assert sandbox.is_running() is False
        assert Sandbox.pause(sandbox.sandbox_id) is False  # already paused
        resumed = Sandbox.connect(sandbox.sandbox_id)
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.run_code("kept + 1").text == "42"
    finally:
        sandbox.kill()


def test_kill_and_is_running(e2b_gateway: GatewayProcess) -> None:
    sandbox = Sandbox.create(timeout=120)
    assert sandbox.is_running() is True
    assert sandbox.kill() is True
    assert sandbox.is_running() is False
    assert Sandbox.kill(sandbox.sandbox_id) is False  # E2B forgets killed sandboxes
    with pytest.raises(SandboxNotFoundException):
        sandbox.get_info()


def test_bad_keys_are_401(e2b_gateway: GatewayProcess) -> None:
    with pytest.raises(AuthenticationException, match="e2b_ followed by 40 hex digits"):
        Sandbox.create(api_key="not-an-e2b-key")
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 40).next_items()


def test_unknown_template_is_404(e2b_gateway: GatewayProcess) -> None:
    with pytest.raises(SandboxException, match="404: template 'no-such-template' not found"):
        Sandbox.create(template="no-such-template")


def test_unknown_and_foreign_sandboxes_are_404(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("0b9e0000-0000-4000-8000-000000000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("0b9e0000-0000-4000-8000-000000000000")
    bob = E2B_KEYS["bob"]
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox.sandbox_id, api_key=bob)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id, api_key=bob)
    assert Sandbox.kill(sandbox.sandbox_id, api_key=bob) is False
    assert sandbox.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=bob).next_items()]
    assert sandbox.is_running()


@pytest.mark.parametrize("body, field", [
    ({"templateID": 5}, "templateID"), ({"timeout": "300"}, "timeout"), ({"autoResume": {"enabled": "yes"}},
                                                                           "autoResume.enabled"),
    ({"autoResume": True}, "autoResume"), ({"metadata": []}, "metadata"), ({"envVars": "A=1"}, "envVars"),
    ({"secure": "no"}, "secure"), ({"allow_internet_access": 1}, "allow_internet_access"),
])
def test_a_wrongly_typed_create_field_is_400_naming_it(e2b_gateway: GatewayProcess, ours: httpx.Client,
                                                       body: dict[str, object], field: str) -> None:
    before = ours.get("/api/v1/sandboxes").json()["total"]
    response = httpx.post(f"{e2b_gateway.url}/e2b/sandboxes", json={"templateID": "base", **body},
                          headers={"X-API-Key": E2B_KEYS["alice"]})
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(f"field '{field}': ") and "is not of type" in response.text
    assert ours.get("/api/v1/sandboxes").json()["total"] == before


def test_sandbox_traffic_needs_the_access_token(sandbox: Sandbox, e2b_gateway: GatewayProcess) -> None:
    body = {"code": "1 + 1"}
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
    url = f"{e2b_gateway.url}/e2b/sandbox/execute"
    assert httpx.post(url, json=body, headers=headers).status_code == 401
    assert httpx.post(url, json=body, headers={**headers, "X-Access-Token": "0" * 40}).status_code == 401
    token = sandbox._envd_access_token
    assert token
    answered = httpx.post(url, json=body, headers={**headers, "X-Access-Token": token})
    assert answered.status_code == 200 and '"text": "2"' in answered.text


def test_what_is_not_supported_says_so(e2b_gateway: GatewayProcess) -> None:
    with pytest.raises(SandboxException, match="network .* is not supported by this gateway"):
        Sandbox.create(network={"deny_out": ["0.0.0.0/0"]})
    with pytest.raises(SandboxException, match="autoPause .* is not supported"):
        Sandbox.create(lifecycle={"on_timeout": "pause"})
    refused = httpx.get(f"{e2b_gateway.url}/e2b/templates", headers={"X-API-Key": E2B_KEYS["alice"]})
    assert refused.status_code == 400
    assert refused.json() == {"code": 400, "message": "GET /templates is not supported by this gateway "
                                                      "(Code Interpreter Gateway's E2B API)"}


def test_keys_cli_makes_e2b_keys_that_work_at_once(e2b_gateway: GatewayProcess) -> None:
    made = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "carol", "--format", "e2b",
                           f"--data-dir={e2b_gateway.data_dir}"], capture_output=True, text=True, check=True)
    key = made.stdout.strip()
    assert key.startswith("e2b_") and len(key) == 44 and int(key[4:], 16) >= 0
    assert Sandbox.list(api_key=key).next_items() == []  # carol's, and she has none
    # It is a key of ours too.
    assert httpx.get(f"{e2b_gateway.url}/api/v1/sandboxes", headers={"Authorization": f"Bearer {key}"}).status_code == 200


async def test_the_async_control_plane(e2b_gateway: GatewayProcess) -> None:
    """The same calls through ``AsyncSandbox``: create, info, list, timeout, metrics, pause, connect, kill."""
    sandbox = await AsyncSandbox.create(template="base", timeout=300, metadata={"suite": "async-control"})
    try:
        info = await sandbox.get_info()
        assert (info.template_id, info.metadata, info.state) == ("base", {"suite": "async-control"},
                                                                SandboxState.RUNNING)
        listed = await AsyncSandbox.list(query=SandboxQuery(metadata={"suite": "async-control"})).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        await sandbox.set_timeout(900)
        left = ((await sandbox.get_info()).end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        assert 850 <= left <= 910
        [metric] = await sandbox.get_metrics()
        assert metric.mem_used > 0 and metric.cpu_count >= 1
        await sandbox.run_code("kept = 41")
        assert await sandbox.pause() is True
        assert await sandbox.is_running() is False
        resumed = await AsyncSandbox.connect(sandbox.sandbox_id)
        assert (await resumed.get_info()).state == SandboxState.RUNNING
        assert (await resumed.run_code("kept + 1")).text == "42"
    finally:
        assert await sandbox.kill() is True
    assert await sandbox.is_running() is False
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.get_info(sandbox.sandbox_id)
