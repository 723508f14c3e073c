"""Running code over REST against a real kernel: results, state, order, timeouts, death, history."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx

from tests.gateways import InProcessGateway, create, run
from tests.waiting import HOLD, executions_of, release, until, until_running, wait_finished


async def test_state_persists_between_executions(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    first = await run(alice, sandbox["id"], "x = 41")
    assert first["status"] == "completed"
    assert first["result"] is None
    second = await run(alice, sandbox["id"], "x + 1")
    assert second["status"] == "completed"
    assert second["result"]["text/plain"] == "42"
    assert second["execution_count"] == first["execution_count"] + 1


async def test_execution_fields(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\n'done'"
    execution = await run(alice, sandbox["id"], code)
    assert execution["sandbox_id"] == sandbox["id"]
    assert execution["code"] == code
    assert execution["status"] == "completed"
    assert execution["stdout"] == "out\n"
    assert execution["stderr"] == "err\n"
    assert execution["result"] == {"text/plain": "'done'"}
    assert execution["error"] is None
    types = [o["output_type"] for o in execution["outputs"]]
    assert types == ["stream", "stream", "execute_result"]
    assert execution["started_at"] <= execution["finished_at"]
    assert execution["duration_ms"] >= 0


async def test_outputs_keep_kernel_order_and_join_stream_chunks(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    code = (
        "import sys\n"
        "for i in range(3): print(i, flush=True)\n"
        "print('e', file=sys.stderr, flush=True)\n"
        "print('after', flush=True)\n"
    )
    outputs = (await run(alice, sandbox["id"], code))["outputs"]
    assert [(o["name"], o["text"]) for o in outputs] == [("stdout", "0\n1\n2\n"), ("stderr", "e\n"), ("stdout", "after\n")]


async def test_exception_fails_the_execution_with_the_error(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    execution = await run(alice, sandbox["id"], "print('before')\n1/0")
    assert execution["status"] == "failed"
    assert execution["stdout"] == "before\n"
    assert execution["error"]["code"] == "exception"
    assert execution["error"]["ename"] == "ZeroDivisionError"
    assert execution["error"]["evalue"] == "division by zero"
    assert any("ZeroDivisionError" in line for line in execution["error"]["traceback"])
    assert execution["outputs"][-1]["output_type"] == "error"
    # The sandbox is still usable afterwards.
    assert (await run(alice, sandbox["id"], "2 + 2"))["result"]["text/plain"] == "4"


async def test_input_fails_fast_instead_of_hanging(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    execution = await run(alice, sandbox["id"], "input('name? ')", timeout=20)
    assert execution["status"] == "failed"
    assert execution["error"]["ename"] == "StdinNotImplementedError"


async def test_timeout_interrupts_and_keeps_state(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    await run(alice, sid, "x = 41")
    execution = await run(alice, sid, "import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=1)
    assert execution["status"] == "timed_out"
    assert execution["stdout"] == "started\n"
    assert execution["error"]["code"] == "timeout"
    assert execution["finished_at"] is not None
    after = await run(alice, sid, "x + 1")
    assert after["result"]["text/plain"] == "42"


async def test_a_kernel_ignoring_the_interrupt_is_restarted_after_the_grace(tmp_path: Any) -> None:
    async with InProcessGateway(tmp_path / "data", "--SandboxManager.interrupt_grace=1") as gateway, \
            gateway.client() as alice:
        sid = (await create(alice))["id"]
        # From now on the kernel ignores SIGINT, before any later code runs (ipykernel would restore
        # the default handler around each request: its hooks go too), like code stuck in C.
        ignoring = ("import signal\nx = 41\nkernel = get_ipython().kernel\n"
                    "kernel.pre_handler_hook = kernel.post_handler_hook = lambda: None\n"
                    "signal.signal(signal.SIGINT, signal.SIG_IGN)")
        assert (await run(alice, sid, ignoring))["status"] == "completed"
        stubborn = await run(alice, sid, "import time\nprint('sleeping', flush=True)\ntime.sleep(120)", timeout=1)
        assert stubborn["status"] == "timed_out", stubborn
        assert stubborn["error"]["code"] == "timeout"
        assert "did not stop when interrupted" in stubborn["error"]["evalue"]
        assert "restarted" in stubborn["error"]["evalue"] and "state is lost" in stubborn["error"]["evalue"]
        # A fresh kernel answers at once (not after the 120 s sleep): the sandbox runs, its state is gone.
        assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
        fresh = await run(alice, sid, "x", timeout=20)
        assert fresh["status"] == "failed" and fresh["error"]["ename"] == "NameError"
        assert fresh["execution_count"] == 1


async def test_a_lost_idle_status_ends_the_execution_after_the_grace_and_says_so(tmp_path: Any) -> None:
    """A kernel's PUB socket drops what a reader does not take in time: without its idle status an
    execution must not wait for its timeout (300 s), nor claim nothing was lost."""
    async with InProcessGateway(tmp_path / "data", "--SandboxManager.idle_grace=1") as gateway, \
            gateway.client() as alice:
        sid = (await create(alice))["id"]
        # This request's idle status is never published (nor any status until the next request
        # puts the method back), as if the kernel's iopub socket had dropped it.
        silent = ("kernel = get_ipython().kernel\n_publish_status = kernel._publish_status\n"
                  "kernel._publish_status = lambda *args, **kwargs: None\nprint('ran')")
        lost = await run(alice, sid, silent, timeout=300)
        assert lost["status"] == "completed" and lost["stdout"].startswith("ran\n"), lost
        assert lost["truncated"] is True and "output dropped" in lost["stderr"], lost
        restored = await run(alice, sid, "kernel._publish_status = _publish_status\n6 * 7")
        assert restored["result"] == {"text/plain": "42"} and restored["truncated"] is False, restored
        assert (await run(alice, sid, "print('again')"))["stdout"] == "again\n"


async def test_an_idle_without_a_reply_ends_the_execution_after_the_grace(tmp_path: Any) -> None:
    """ipykernel sends no reply when a SIGINT lands in its handling of a request before the code
    runs: the execution must end after ``idle_grace``, not wait for its timeout."""
    async with InProcessGateway(tmp_path / "data", "--SandboxManager.idle_grace=1") as gateway, \
            gateway.client() as alice:
        sid = (await create(alice))["id"]
        # This request's execute_reply is never sent (the next one's is: the method is put back).
        unanswered = ("kernel = get_ipython().kernel\n_send = kernel.session.send\n"
                      "def _drop_reply(stream, msg_or_type, *args, **kwargs):\n"
                      "    kind = msg_or_type if isinstance(msg_or_type, str) else msg_or_type['header']['msg_type']\n"
                      "    if kind == 'execute_reply':\n"
                      "        kernel.session.send = _send\n"
                      "        return None\n"
                      "    return _send(stream, msg_or_type, *args, **kwargs)\n"
                      "kernel.session.send = _drop_reply\nprint('ran')")
        lost = await run(alice, sid, unanswered, timeout=300)
        assert lost["status"] == "failed" and lost["stdout"] == "ran\n", lost
        assert lost["error"]["ename"] == "KernelError" and "without sending its reply" in lost["error"]["evalue"]
        assert (await run(alice, sid, "6 * 7"))["result"] == {"text/plain": "42"}


async def test_kernel_death_fails_the_execution_and_restart_recovers(
    alice: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    execution = await run(alice, sid, "import os; os._exit(1)")
    assert execution["status"] == "failed"
    assert execution["error"]["code"] == "kernel_died"
    shown = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert shown["status"] == "failed"
    assert shown["status_reason"] == "kernel_died"
    refused = await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "1"})
    assert refused.status_code == 409
    assert "restart" in refused.json()["error"]["message"]
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/restart")  # a failed sandbox comes back
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["status"] == "running" and restarted.json()["status_reason"] is None
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
    assert (await run(alice, sid, "1 + 1"))["result"]["text/plain"] == "2"


def kernels_crashing_at_start(gateway: InProcessGateway, monkeypatch: Any, times: int) -> list[int]:
    """The next ``times`` fresh kernels of a restart get SIGSEGV the moment they start, before they
    answer (a kernel's own crash at start, as ipykernel had in CI); their pids."""
    launcher = gateway.app.sandboxes.launcher
    relaunch = launcher.relaunch
    crashed: list[int] = []

    async def crashing(km: Any, sandbox: Any) -> None:
        await relaunch(km, sandbox)
        if len(crashed) < times:
            crashed.append(km.provisioner.pid)
            os.kill(km.provisioner.pid, signal.SIGSEGV)

    monkeypatch.setattr(launcher, "relaunch", crashing)
    return crashed


async def test_a_restart_whose_fresh_kernel_crashes_at_start_starts_another(
    gateway: InProcessGateway, alice: httpx.AsyncClient, sandbox: dict[str, Any], monkeypatch: Any
) -> None:
    sid = sandbox["id"]
    await run(alice, sid, "x = 1")
    crashed = kernels_crashing_at_start(gateway, monkeypatch, times=1)
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/restart")
    assert restarted.status_code == 200, restarted.text
    assert len(crashed) == 1 and restarted.json()["status"] == "running"
    answered = await run(alice, sid, "import os; os.getpid(), 'x' in globals()")
    pid, kept = eval(answered["result"]["text/plain"])  # (a tuple's repr)
    assert pid != crashed[0] and kept is False  # a third kernel, fresh


async def test_a_restart_whose_fresh_kernels_keep_crashing_fails(
    gateway: InProcessGateway, alice: httpx.AsyncClient, sandbox: dict[str, Any], monkeypatch: Any
) -> None:
    sid = sandbox["id"]
    crashed = kernels_crashing_at_start(gateway, monkeypatch, times=2)
    restarted = await alice.post(f"/api/v1/sandboxes/{sid}/restart")
    assert restarted.status_code == 503 and restarted.json()["error"]["code"] == "sandbox_start_failed", restarted.text
    assert len(crashed) == 2  # tried once more, not for good
    shown = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert (shown["status"], shown["status_reason"]) == ("failed", "restart_failed")


async def test_executions_in_one_sandbox_run_one_at_a_time_in_arrival_order(
    alice: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    await run(alice, sid, "import time; order = []")
    codes = [f"time.sleep(0.2); order.append({i}); {i}" for i in range(4)]
    tasks = []
    for submitted, code in enumerate(codes, start=2):
        tasks.append(asyncio.create_task(run(alice, sid, code)))
        # Arrival order is the order the gateway accepted them: the next one goes once this one is stored.
        await until(lambda: executions_of(alice, sid), lambda listed: len(listed) == submitted,
                    what=f"execution {submitted} to be accepted")
    results = await asyncio.gather(*tasks)
    assert [r["result"]["text/plain"] for r in results] == ["0", "1", "2", "3"]
    assert (await run(alice, sid, "order"))["result"]["text/plain"] == "[0, 1, 2, 3]"
    for earlier, later in zip(results, results[1:]):
        assert earlier["finished_at"] <= later["started_at"]


async def test_different_sandboxes_run_in_parallel(alice: httpx.AsyncClient) -> None:
    ids = [(await alice.post("/api/v1/sandboxes")).json()["id"] for _ in range(2)]
    # The first still runs (held) when the second is seen running: both run at once.
    pending = [await until_running(alice, sid, HOLD) for sid in ids]
    assert [(await executions_of(alice, sid))[-1]["status"] for sid in ids] == ["running", "running"]
    for sid in ids:
        await release(alice, sid)
    first, second = await asyncio.gather(*pending)
    assert first["status"] == second["status"] == "completed"
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]


async def test_history_lists_and_refetches_executions(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    ran = [await run(alice, sid, f"{i} * 10") for i in range(3)]
    listed = (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]
    assert [e["id"] for e in listed] == [e["id"] for e in ran]
    again = (await alice.get(f"/api/v1/executions/{ran[1]['id']}")).json()
    assert again == ran[1]
    page = (await alice.get(f"/api/v1/sandboxes/{sid}/executions?limit=1&offset=2")).json()["executions"]
    assert [e["id"] for e in page] == [ran[2]["id"]]


async def test_someone_elses_execution_is_not_found(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    execution = await run(alice, sandbox["id"], "1")
    response = await bob.get(f"/api/v1/executions/{execution['id']}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "execution_not_found"


async def test_a_dropped_client_loses_nothing(gateway: Any, alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    async with gateway.client("alice") as impatient:
        pending = await until_running(impatient, sid, HOLD + "print('still here')\n'result'")
        pending.cancel()  # the client goes away mid-request, while the code runs
        await asyncio.gather(pending, return_exceptions=True)
    await release(alice, sid)
    listed = await executions_of(alice, sid)
    assert len(listed) == 1
    execution = await wait_finished(alice, listed[0]["id"])
    assert execution["status"] == "completed"
    assert execution["stdout"] == "started\nstill here\n"
    assert execution["result"]["text/plain"] == "'result'"


async def test_interrupt_cancels_the_running_execution_and_keeps_state(
    alice: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    sid = sandbox["id"]
    await run(alice, sid, "x = 5")
    slow = await until_running(alice, sid, "import time\ntime.sleep(60)")
    response = await alice.post(f"/api/v1/sandboxes/{sid}/interrupt")
    assert response.status_code == 200
    execution = await slow
    assert execution["status"] == "cancelled"
    assert execution["error"]["ename"] == "KeyboardInterrupt"
    assert (await run(alice, sid, "x"))["result"]["text/plain"] == "5"
