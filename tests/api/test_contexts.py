"""Contexts on our own API (local provisioner): several kernels in one sandbox, sharing its files.

``POST|GET /api/v1/sandboxes/{id}/contexts``, ``"context"``/``"language"`` on execute, restart and
removal of a context, and the errors: an unknown context 404, an unknown language 400, the
default context cannot be removed; the default context's status is its sandbox's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.api.openapi import CONTEXT
from gateway.sandboxes.contexts import full_image
from tests.api.test_errors import assert_error
from tests.api.test_executions import kernels_crashing_at_start
from tests.gateways import InProcessGateway, create, run
from tests.provisioned import PROVISIONERS, SANDBOX_KINDS, gateway_for, gateway_of_kind
from tests.waiting import executions_of, until


async def test_contexts_share_the_sandbox_and_run_side_by_side(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    made = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "bash"})
    assert made.status_code == 201, made.text
    bash = made.json()
    assert (bash["language"], bash["default"], bash["status"]) == ("bash", False, "running")
    listed = (await alice.get(f"/api/v1/sandboxes/{sid}/contexts")).json()["contexts"]
    assert [(c["id"], c["language"], c["default"]) for c in listed] == [(sid, "python", True), (bash["id"], "bash", False)]
    # The python kernel waits for a file only the bash kernel writes: both run at once, on one directory.
    waiting = asyncio.ensure_future(run(alice, sid, "import os, time\nwhile not os.path.exists('from-bash'):\n"
                                                    "    time.sleep(0.05)\nopen('from-bash').read()"))
    written = await run(alice, sid, "echo shared > from-bash; cat from-bash", context=bash["id"])
    assert written["stdout"] == "shared\n" and written["context"] == bash["id"]
    finished = await asyncio.wait_for(waiting, 60)
    assert finished["result"]["text/plain"] == "'shared\\n'" and finished["context"] is None
    # State is per context; "language" runs in the sandbox's context of that language.
    await run(alice, sid, "COUNT=41", context=bash["id"])
    assert (await run(alice, sid, "echo $((COUNT + 1))", language="bash"))["stdout"] == "42\n"
    history = (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
    assert [e["context"] for e in history][-2:] == [bash["id"], bash["id"]]


async def test_restart_remove_and_errors(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    await run(alice, sid, "import os; os.makedirs('sub', exist_ok=True)")
    context: dict[str, Any] = (await alice.post(f"/api/v1/sandboxes/{sid}/contexts",
                                                json={"language": "python", "cwd": "sub"})).json()
    assert context["cwd"] == "sub"
    assert (await run(alice, sid, "import os; os.getcwd().endswith('sub')", context=context["id"]))["result"] == {
        "text/plain": "True"}
    await run(alice, sid, "kept = 1", context=context["id"])
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/contexts/{context['id']}/restart")
    assert restarted.status_code == 200, restarted.text
    gone = await run(alice, sid, "kept", context=context["id"])
    assert gone["error"]["ename"] == "NameError"
    assert (await run(alice, sid, "import os; os.getcwd().endswith('sub')", context=context["id"]))["result"] == {
        "text/plain": "True"}  # (still in its directory)
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}/contexts/{context['id']}")).status_code == 204
    missing = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1", "context": context["id"]})
    assert_error(missing, 404, "context_not_found")
    assert_error(await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "cobol"}),
                 400, "invalid_request")
    assert_error(await alice.delete(f"/api/v1/sandboxes/{sid}/contexts/{sid}"), 409, "default_context")
    both = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1", "context": sid, "language": "bash"})
    assert_error(both, 400, "invalid_request")
    assert_error(await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"cwd": "../out"}), 400, "invalid_path")
    nul = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"cwd": "a\x00b"})
    assert_error(nul, 400, "invalid_request")
    assert "cwd" in nul.json()["error"]["message"]


async def test_a_context_restart_whose_fresh_kernel_crashes_at_start_starts_another(
        gateway: InProcessGateway, alice: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = (await create(alice))["id"]
    await run(alice, sid, "import os; os.makedirs('sub', exist_ok=True)")
    context = (await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "python", "cwd": "sub"})).json()
    crashed = kernels_crashing_at_start(gateway, monkeypatch, times=1)
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/contexts/{context['id']}/restart")
    assert restarted.status_code == 200, restarted.text
    answered = await run(alice, sid, "import os; os.getpid(), os.getcwd().endswith('sub')", context=context["id"])
    assert len(crashed) == 1 and answered["result"]["text/plain"] != f"({crashed[0]}, True)"
    assert answered["result"]["text/plain"].endswith(", True)")  # a third kernel, in the context's directory


async def test_a_cwd_that_is_not_a_directory_is_refused_and_starts_nothing(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    await run(alice, sid, "open('a-file', 'w').close()")
    kernels = len((await alice.get("/api/kernels")).json())
    for language in ("python", "bash"):
        for cwd in ("x;\u00b3\u00f8+", "a-file"):
            refused = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": language, "cwd": cwd})
            assert_error(refused, 404, "file_not_found")
            assert repr(cwd) in refused.json()["error"]["message"]
    listed = (await alice.get(f"/api/v1/sandboxes/{sid}/contexts")).json()["contexts"]
    assert [c["id"] for c in listed] == [sid]
    assert len((await alice.get("/api/kernels")).json()) == kernels
    # A context whose directory is removed later restarts in the sandbox's working directory, and says so.
    await run(alice, sid, "import os; os.makedirs('brief')")
    context = (await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"cwd": "brief"})).json()
    await run(alice, sid, "import os; os.rmdir('brief')")
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/contexts/{context['id']}/restart")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["cwd"] == ""
    here = await run(alice, sid, "import os; os.getcwd()", context=context["id"])
    assert here["result"] == (await run(alice, sid, "import os; os.getcwd()"))["result"]


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_the_default_context_is_in_its_sandboxs_status(provisioner: str, tmp_path: Any) -> None:
    """The default context is the sandbox's own kernel: paused, running again or terminated with it
    (not "running" whatever the sandbox is), as the document's enum says; the others stay running."""
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        url = f"/api/v1/sandboxes/{sid}/contexts"
        other = (await alice.post(url, json={"language": "python"})).json()

        async def statuses() -> list[tuple[str, str, bool]]:
            response = await alice.get(url)
            assert response.status_code == 200, response.text
            for context in response.json()["contexts"]:
                jsonschema.validate(context, CONTEXT)
            return [(c["id"], c["status"], c["default"]) for c in response.json()["contexts"]]

        assert await statuses() == [(sid, "running", True), (other["id"], "running", False)]
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).json()["status"] == "paused"
        assert await statuses() == [(sid, "paused", True)]  # (a pause ends the other contexts)
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/resume")).json()["status"] == "running"
        assert await statuses() == [(sid, "running", True)]
        assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
        assert await statuses() == [(sid, "terminated", True)]


@pytest.mark.parametrize("kind", SANDBOX_KINDS)
async def test_an_interrupt_reaches_a_bash_job_that_missed_the_first_sigint(kind: str, tmp_path: Any) -> None:
    """bash_kernel interrupts a cell with one ^C on bash's terminal, which a job just starting misses
    (and under gVisor any job does: kernels/bash/kernel.py). The job here ignores SIGINT for its
    first 2 s, as if the first had come too soon: the kernel's own SIGINTs to the foreground job
    after it end it, a job in the background is spared, and the context keeps its state. Without
    them bash_kernel waits 30 s for a prompt: the interrupt's grace runs out and the gateway replaces
    the kernel (X is gone); and a second interrupt while it waits ends the request with no reply."""
    image = [] if kind == "local" else [f"--image={full_image()}"]  # (the python image has no bash kernel)
    async with gateway_of_kind(kind, tmp_path, *image) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        made = await alice.post(f"/api/v1/sandboxes/{sid}/contexts", json={"language": "bash"})
        assert made.status_code == 201, made.text
        bash = made.json()["id"]
        assert (await run(alice, sid, "X=41; sleep 600 & BACKGROUND=$!", context=bash))["status"] == "completed"
        stubborn = "echo go; (trap '' INT; sleep 2; trap - INT; exec sleep 60)"
        timed_out = await run(alice, sid, stubborn, context=bash, timeout=1)
        assert timed_out["status"] == "timed_out" and timed_out["stdout"].startswith("go\n"), timed_out
        after = await run(alice, sid, "echo $((X + 1)); kill -0 $BACKGROUND && echo spared", context=bash)
        assert after["stdout"] == "42\nspared\n", after

        # Interrupted twice on request, the second time while bash_kernel waits for its prompt.
        running = asyncio.create_task(run(alice, sid, stubborn, context=bash))

        async def started() -> bool:
            latest = (await executions_of(alice, sid))[-1]
            return latest["status"] == "running" and latest["stdout"].startswith("go")

        await until(started, what="the stubborn job to start")
        for _ in range(2):
            assert (await alice.post(f"/api/kernels/{bash}/interrupt")).status_code == 204
            await asyncio.sleep(0.3)
        cancelled = await asyncio.wait_for(running, 30)
        assert cancelled["status"] == "cancelled", cancelled
        assert (await run(alice, sid, "echo $((X + 2))", context=bash))["stdout"] == "43\n"


async def test_someone_elses_contexts_are_404(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    assert_error(await bob.get(f"/api/v1/sandboxes/{sandbox['id']}/contexts"), 404, "sandbox_not_found")
    assert_error(await bob.post(f"/api/v1/sandboxes/{sandbox['id']}/contexts", json={}), 404, "sandbox_not_found")


async def test_kernelspecs_list_every_language(alice: httpx.AsyncClient) -> None:
    specs = (await alice.get("/api/kernelspecs")).json()
    assert specs["default"] == "python3"
    assert {"python3", "bash", "ir", "deno"} <= set(specs["kernelspecs"])
    assert specs["kernelspecs"]["ir"]["spec"]["language"] == "R"
