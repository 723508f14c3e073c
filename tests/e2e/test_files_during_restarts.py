"""File requests while their sandbox restarts: each one waits for the restart, succeeds, or is a 409 — never a 5xx.

A restart replaces the sandbox's container (and its working directory). Requests that arrive
while it runs wait for it; requests whose tool was running in the old container when it went end
with 409 ``sandbox_not_running``, and a retry reaches the new one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.gateways import create, run
from tests.provisioned import PROVISIONERS, gateway_for

pytestmark = pytest.mark.timeout(400)

RESTARTS = 4
AT_LEAST = 96
#: What a file request may answer while restarts come and go.
EXPECTED = {200, 201, 204, 404, 409}


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_file_requests_during_restarts_are_never_a_server_error(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        files = f"/api/v1/sandboxes/{sid}/files"
        answers: list[tuple[str, int, str | None]] = []
        restarting = True

        async def hammer(worker: int) -> None:
            step = 0
            while restarting or len(answers) < AT_LEAST:
                step += 1
                name = f"{files}/w{worker}.bin"
                request = [
                    lambda: alice.put(name, content=bytes(range(256)) * 40),
                    lambda: alice.get(files),
                    lambda: alice.get(name),
                    lambda: alice.delete(name),
                ][step % 4]
                response = await request()
                code = response.json()["error"]["code"] if response.status_code >= 400 else None
                answers.append((response.request.method, response.status_code, code))

        workers = [asyncio.create_task(hammer(n)) for n in range(6)]
        try:
            for _ in range(RESTARTS):
                restarted = await alice.post(f"/api/v1/sandboxes/{sid}/restart")
                assert restarted.status_code == 200, restarted.text
        finally:
            restarting = False
            await asyncio.gather(*workers)

        unexpected = [answer for answer in answers if answer[1] not in EXPECTED]
        assert not unexpected, unexpected
        assert {code for _, status, code in answers if status == 409} <= {"sandbox_not_running"}
        assert {code for _, status, code in answers if status == 404} <= {"file_not_found"}
        assert sum(status < 300 for _, status, _ in answers) >= AT_LEAST // 2
        # The sandbox and its files work as usual afterwards.
        assert (await alice.put(f"{files}/after.txt", content=b"ok")).status_code == 201
        assert (await run(alice, sid, "print(open('after.txt').read())"))["stdout"] == "ok\n"
