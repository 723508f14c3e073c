"""Kernels of other languages through the Jupyter kernels API: each one a context, in a Docker sandbox.

jupyter_server's own ``GatewayKernelManager`` (what ``jupyter lab --gateway-url`` and nbclient use)
starts a ``bash`` kernel with ``POST /api/kernels``, talks to it over the channels WebSocket,
interrupts, restarts and deletes it; the sandbox it ran in goes with it. A context made through
our own API is a Jupyter kernel too, with the same owner checks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from queue import Empty
from typing import Any

import pytest
import websockets
from jupyter_server.gateway.managers import GatewayKernelClient

from tests.api.test_errors import assert_error
from tests.api.test_jupyter import execute_request, replies_to
from tests.gateways import KEYS, GatewayProcess, create, run
from tests.jupyter_clients import AuthGatewayKernelClient, GatewayKernels, gateway_client

pytestmark = pytest.mark.docker

TOKEN = {"Authorization": f"token {KEYS['alice']}"}


async def run_cell(kc: GatewayKernelClient, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
    """Execute ``code``; its execute_reply and what it printed (iopub, up to its idle status)."""
    msg_id = kc.execute(code)
    printed, idle = "", False
    async with asyncio.timeout(timeout):
        while not idle:
            msg = await kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed += msg["content"]["text"]
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
        while True:
            reply = await kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply, printed


async def until_iopub_hears(kc: GatewayKernelClient) -> None:
    """Ask for kernel_info until its status arrives on iopub (after a restart the sockets reconnect by
    themselves, and a subscription misses what is sent before it is back)."""
    async with asyncio.timeout(60):
        while True:
            msg_id = kc.kernel_info()
            try:
                while (await kc.get_iopub_msg(timeout=1))["parent_header"].get("msg_id") != msg_id:
                    pass
                return
            except Empty:
                continue


async def test_a_bash_kernel_through_a_stock_jupyter_client(client_gateway: GatewayProcess) -> None:
    with gateway_client(client_gateway.url, KEYS["alice"]):
        km = GatewayKernels(kernel_name="bash", client_factory=AuthGatewayKernelClient)
        await km.start_kernel(kernel_name="bash")  # (as its mapping manager passes it)
        kernel_id = km.kernel_id
        assert km.kernel is not None and km.kernel["name"] == "bash"
        kc = km.client()
        await kc.start_channels()
        try:
            reply, printed = await run_cell(kc, "X=41; echo hi")
            assert reply["content"]["status"] == "ok" and printed == "hi\n"
            async with client_gateway.client("alice") as alice:
                # It is a context of a sandbox started for it; /api/kernels lists the kernel, not the sandbox's own.
                started_for = {"started_by": "jupyter", "kernelspec": "bash"}
                sandbox = next(s for s in (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]
                               if s["metadata"] == started_for and s["status"] == "running")
                contexts = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/contexts")).json()["contexts"]
                assert [c["language"] for c in contexts] == ["python", "bash"] and contexts[1]["id"] == kernel_id
                listed = [(k["id"], k["name"]) for k in (await alice.get("/api/kernels")).json()]
                assert (kernel_id, "bash") in listed and sandbox["id"] not in [i for i, _ in listed]
                assert sandbox["image"].startswith("code-gateway/full:")
                model = (await alice.get(f"/api/kernels/{kernel_id}")).json()
                assert model["connections"] == 1 and model["execution_state"] == "idle"

            # Interrupt: the sleep ends long before its time, and the kernel keeps its state.
            sleeping = kc.execute("sleep 600")
            async with asyncio.timeout(60):  # (interrupting before bash runs it would interrupt nothing)
                while not ((msg := await kc.get_iopub_msg(timeout=60))["parent_header"].get("msg_id") == sleeping
                           and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy"):
                    pass
            await km.interrupt_kernel()
            async with asyncio.timeout(60):
                while (await kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != sleeping:
                    pass
            assert (await run_cell(kc, "echo $((X + 1))"))[1] == "42\n"

            # Restart: a fresh bash, the same kernel id and socket.
            await km.restart_kernel()
            await until_iopub_hears(kc)
            assert (await run_cell(kc, "echo ${X:-unset}"))[1] == "unset\n"
        finally:
            kc.stop_channels()
        await km.shutdown_kernel()
    async with client_gateway.client("alice") as alice:
        assert_error(await alice.get(f"/api/kernels/{kernel_id}"), 404, "sandbox_not_found")
        assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}")).json()["status"] == "terminated"
        assert kernel_id not in [k["id"] for k in (await alice.get("/api/kernels")).json()]


async def test_a_context_of_our_api_is_a_kernel_of_its_owner(client_gateway: GatewayProcess) -> None:
    async with client_gateway.client("alice") as alice, client_gateway.client("bob") as bob:
        assert_error(await alice.post("/api/kernels", json={"name": "julia"}), 404, "not_found",
                     "no kernelspec named 'julia': the kernelspecs are bash, deno, ir, python3")
        sandbox = await create(alice)  # the default image: python only
        context = (await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/contexts", json={})).json()
        kernel_id = context["id"]
        listed = {k["id"]: k["name"] for k in (await alice.get("/api/kernels")).json()}
        assert (listed[sandbox["id"]], listed[kernel_id]) == ("python3", "python3")
        # Someone else's: as if it did not exist, on every route and the WebSocket.
        assert kernel_id not in [k["id"] for k in (await bob.get("/api/kernels")).json()]
        for answer in (await bob.get(f"/api/kernels/{kernel_id}"), await bob.delete(f"/api/kernels/{kernel_id}"),
                       await bob.post(f"/api/kernels/{kernel_id}/restart", json={})):
            assert_error(answer, 404, "sandbox_not_found")
        url = client_gateway.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers={"Authorization": f"token {KEYS['bob']}"}):
                pass
        assert refused.value.response.status_code == 404
        # Its owner's socket runs code in that context (signed with the context's own key), not the sandbox's.
        await run(alice, sandbox["id"], "where = 'sandbox'")
        async with websockets.connect(url, additional_headers=TOKEN) as socket:
            request = execute_request("where = 'context'\nwhere")
            await socket.send(json.dumps(request))
            got = await replies_to(socket, request["header"]["msg_id"])
        assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["'context'"]
        assert (await run(alice, sandbox["id"], "where"))["result"]["text/plain"] == "'sandbox'"
        # Deleting the kernel removes the context; the sandbox, not started for it, stays.
        assert (await alice.delete(f"/api/kernels/{kernel_id}")).status_code == 204
        assert [c["id"] for c in (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/contexts")).json()["contexts"]] \
            == [sandbox["id"]]
        assert (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}")).json()["status"] == "running"
        assert (await alice.delete(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 204

