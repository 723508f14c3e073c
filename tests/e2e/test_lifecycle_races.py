"""Lifecycle operations on one sandbox are serialized: interrupts, restarts and deletes that overlap
never kill a kernel or leave a sandbox half-restarted (real kernels, both provisioners)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from tests.api.test_errors import assert_error
from tests.provisioned import alice, create, each_gateway, run  # noqa: F401

RESTARTS = 3


async def interrupt_until(alice: httpx.AsyncClient, sandbox_id: str, done: asyncio.Task[Any]) -> list[httpx.Response]:
    """Interrupt ``sandbox_id`` over and over until ``done`` ends; every answer."""
    answers = []
    while not done.done():
        answers.append(await alice.post(f"/api/v1/sandboxes/{sandbox_id}/interrupt"))
    return answers


async def test_interrupts_during_a_restart_never_kill_the_new_kernel(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    busy_answers = 0
    for attempt in range(RESTARTS):
        await run(alice, sid, f"before = {attempt}")
        restart = asyncio.create_task(alice.post(f"/api/v1/sandboxes/{sid}/restart"))
        answers = await interrupt_until(alice, sid, restart)
        restarted = await restart
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["status"] == "running"
        for answer in answers:  # accepted (the old kernel, before the swap) or refused while the kernel is replaced
            if answer.status_code != 200:
                assert_error(answer, 409, "sandbox_busy")
                assert "restart" in answer.json()["error"]["message"]
                busy_answers += 1
        # The new kernel lives, has empty state, and takes work and interrupts as usual.
        fresh = await run(alice, sid, "'before' in globals()")
        assert fresh["status"] == "completed", fresh["error"]
        assert fresh["result"]["text/plain"] == "False"
        assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "running"
    assert busy_answers > 0  # the race was really run: some interrupts came while a kernel was being replaced
    interrupted = asyncio.create_task(run(alice, sid, "import time; time.sleep(60)"))
    while (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"][-1]["status"] != "running":
        await asyncio.sleep(0.05)
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/interrupt")).status_code == 200
    assert (await interrupted)["status"] == "cancelled"


async def test_overlapping_restarts_and_a_delete_run_one_after_another(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    sid = sandbox["id"]
    await run(alice, sid, "x = 1")
    restarts = [asyncio.create_task(alice.post(f"/api/v1/sandboxes/{sid}/restart")) for _ in range(2)]
    await asyncio.sleep(0)  # both requests are on their way before the delete
    delete = asyncio.create_task(alice.delete(f"/api/v1/sandboxes/{sid}"))
    answers = await asyncio.gather(*restarts)
    deleted = await delete
    assert deleted.status_code == 204
    for answer in answers:  # each restart either completed before the delete or found the sandbox gone
        if answer.status_code != 200:
            assert_error(answer, 409, "sandbox_not_running")
    final = (await alice.get(f"/api/v1/sandboxes/{sid}")).json()
    assert final["status"] == "terminated" and final["status_reason"] == "deleted"
    # A restart or interrupt after the delete is refused, and changes nothing.
    assert_error(await alice.post(f"/api/v1/sandboxes/{sid}/restart"), 409, "sandbox_not_running")
    assert_error(await alice.post(f"/api/v1/sandboxes/{sid}/interrupt"), 409, "sandbox_not_running")
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "terminated"
