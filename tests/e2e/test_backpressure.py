"""Bounded memory, whatever a kernel emits or a client fails to read (attacks on a real gateway
process with Docker sandboxes; its memory is read from /proc).

- Kernels publishing at full speed, faster than any gateway reads: 1.5 GiB of forged 1 MiB
  messages sent zero-copy from the kernel's own iopub socket leave the gateway's peak memory bounded
  (ZMQ's receive queue is bounded, the backlog waits in the kernel) and every one of them is
  counted as dropped; 30,000 signed stream messages sent the same way all arrive, none dropped.
- 400 display updates of 1 MiB each and a 400 MiB stream flood, unpaced, streamed to a client that never
  reads: the gateway's peak memory grows by a bounded amount, the executions are stored as they
  should be (the latest display; the stream capped), and /health answers.
- A Jupyter channels client that never reads while the kernel prints 300 MiB: closed with 1008
  once 32 MiB wait for it; the gateway stays bounded.
- /stream and NDJSON clients that never read, with a small send buffer: cut off (1008, or an
  ``error`` event ending the stream), while every execution runs on and is stored complete.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.api.backpressure import DEFAULT_SEND_BUFFER
from tests.api.test_jupyter import execute_request
from tests.conftest import docker_or_fail
from tests.gateways import KEYS, GatewayProcess, create, run
from tests.stalled import StalledClient, close_frame, memory_of, metric
from tests.waiting import HOLD, executions_of, release, until, wait_finished

pytestmark = pytest.mark.docker

MiB = 1 << 20
#: What the floods below may add to the gateway's peak memory: the per-execution cap (10 MiB) held
#: a few times over (outputs, live events, the stored record's JSON, and since ced5248 the finished
#: outputs' JSON kept encoded beside them for the record, the response and every final event) and
#: the kernel's messages in flight. Measured here: 130-140 MiB before ced5248, 160-175 MiB after
#: (188 in a loaded CI run). Without the bounds they added 400 MiB and more.
PEAK_GROWTH = 200 * MiB

#: 400 MiB each, as fast as the kernel makes them.
UPDATE_FLOOD = (
    "from IPython.display import display\n"
    "handle = display({'text/plain': 'start'}, raw=True, display_id=True)\n"
    "for i in range(400):\n"
    "    handle.update({'text/plain': '%04d' % i + 'u' * ((1 << 20) - 4)}, raw=True)\n"
)
STREAM_FLOOD = "import sys\nfor i in range(400):\n    sys.stdout.write('s' * (1 << 20)); sys.stdout.flush()\n"

#: Sends ``frames`` ``COUNT`` times from the kernel's iopub thread, at the speed of memory: zero-copy, so
#: the kernel's own memory hardly grows however much waits in its queue. Returns once all are queued.
RAW_FLOOD = """
import threading
thread = get_ipython().kernel.iopub_thread
done = threading.Event()
def flood():
    for _ in range(COUNT):
        thread.socket.send_multipart(frames, copy=False)
    done.set()
thread.schedule(flood)
assert done.wait(600)
"""
#: 1.5 GiB of unsigned 1 MiB messages.
FORGED_FLOOD = "frames = [b'flood', b'<IDS|MSG>', b'0' * 64, b'{}', b'{}', b'{}', b'f' * (1 << 20)]\nCOUNT = 1536\n" + RAW_FLOOD
#: One signed stream message of this execution, 30,000 times.
SIGNED_FLOOD = (
    "kernel = get_ipython().kernel\n"
    "msg = kernel.session.msg('stream', {'name': 'stdout', 'text': 'x\\n'}, parent=kernel.get_parent('shell'))\n"
    "frames = kernel.session.serialize(msg, ident=b'stream.stdout')\nCOUNT = 30000\n" + RAW_FLOOD
)
JUPYTER_FLOOD = "import sys\nfor i in range(300):\n    sys.stdout.write('j' * (1 << 20)); sys.stdout.flush()\n"


@pytest.fixture
async def gateway(tmp_path: Any, request: Any) -> AsyncIterator[GatewayProcess]:
    docker_or_fail().close()
    args = getattr(request, "param", ())
    running = await GatewayProcess(tmp_path / "data", *args, provisioner="docker").start()
    try:
        yield running
    finally:
        await running.stop()


def port_of(gateway: GatewayProcess) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def pid_of(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return gateway.process.pid


async def slow_clients(client: httpx.AsyncClient, kind: str) -> float:
    return metric((await client.get("/metrics")).text, "code_gateway_slow_clients_total", kind=kind)


async def stalled_execute(gateway: GatewayProcess, sandbox_id: str, code: str) -> StalledClient:
    """POST an execute asking for NDJSON, then never read the answer."""
    client = await StalledClient.open(port_of(gateway))
    body = {"code": code, "timeout": 600}  # a loaded machine may take a while: the end, not the time, is tested
    await client.post(f"/api/v1/sandboxes/{sandbox_id}/execute", json.dumps(body).encode(),
                      {"Authorization": f"Bearer {KEYS['alice']}", "Content-Type": "application/json",
                       "Accept": "application/x-ndjson"})
    return client


async def finished_execution(alice: httpx.AsyncClient, sandbox_id: str, count: int) -> dict[str, Any]:
    """The ``count``-th execution of the sandbox, once it has ended (waiting on the small sandbox
    record: polling a growing 10 MiB execution would itself cost the gateway memory)."""
    await until(lambda: alice.get(f"/api/v1/sandboxes/{sandbox_id}"), lambda r: r.json()["execution_count"] >= count,
                what=f"execution {count} to end", timeout=300)
    response = await alice.get(f"/api/v1/sandboxes/{sandbox_id}/executions?offset={count - 1}&limit=1")
    (execution,) = response.json()["executions"]
    return dict(execution)


async def warm_sandbox(alice: httpx.AsyncClient) -> dict[str, Any]:
    """A new sandbox that has run once (so what is measured after is the flood, not the first run)."""
    sandbox = await create(alice)
    await run(alice, sandbox["id"], "1")
    return sandbox


async def test_a_kernel_publishing_at_full_speed_is_held_back_in_the_kernel_losing_nothing(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client("alice") as alice:
        sandbox = await warm_sandbox(alice)
        dropped = metric((await alice.get("/metrics")).text, "code_gateway_kernel_messages_dropped_total",
                         reason="bad_signature")
        before = memory_of(pid_of(gateway))
        execution = await run(alice, sandbox["id"], FORGED_FLOOD, timeout=600)
        assert execution["status"] == "completed", execution
        grown = memory_of(pid_of(gateway))["peak"] - before["peak"]
        assert grown < PEAK_GROWTH, f"the gateway's peak memory grew by {grown / MiB:.0f} MiB"
        # Every forged message reached the gateway (none dropped silently on the way) and was counted.
        assert metric((await alice.get("/metrics")).text, "code_gateway_kernel_messages_dropped_total",
                      reason="bad_signature") - dropped == 1536
        assert (await alice.get("/health")).status_code == 200

        execution = await run(alice, sandbox["id"], SIGNED_FLOOD, timeout=600)
        assert execution["status"] == "completed" and not execution["truncated"], execution
        assert execution["stdout"] == "x\n" * 30000


async def test_output_floods_to_a_client_that_never_reads_keep_the_gateway_bounded(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client("alice") as alice:
        sandbox = await warm_sandbox(alice)
        before = memory_of(pid_of(gateway))

        updates = await stalled_execute(gateway, sandbox["id"], UPDATE_FLOOD)
        execution = await finished_execution(alice, sandbox["id"], 2)
        assert execution["status"] == "completed" and not execution["truncated"]
        (display,) = execution["outputs"]
        assert display["output_type"] == "display_data"
        assert display["data"]["text/plain"].startswith("0399u") and len(display["data"]["text/plain"]) == MiB
        assert (await alice.get("/health")).status_code == 200

        streams = await stalled_execute(gateway, sandbox["id"], STREAM_FLOOD)
        execution = await finished_execution(alice, sandbox["id"], 3)
        assert execution["status"] == "completed" and execution["truncated"]
        assert 5 * MiB <= len(execution["stdout"]) <= 10 * MiB
        assert "output truncated" in execution["stderr"]

        # (Unpaced, the floods also fill the stalled clients' send buffers before they are cut off.)
        grown = memory_of(pid_of(gateway))["peak"] - before["peak"]
        assert grown < DEFAULT_SEND_BUFFER + PEAK_GROWTH, f"the gateway's peak memory grew by {grown / MiB:.0f} MiB"
        health = await alice.get("/health")
        assert health.status_code == 200 and health.json()["sandboxes"]["live"] == 1
        updates.close()
        streams.close()


async def test_a_jupyter_client_that_never_reads_is_cut_off_at_the_send_buffer(gateway: GatewayProcess) -> None:
    async with gateway.client("alice") as alice:
        kernel = (await alice.post("/api/kernels", json={})).json()
        before = memory_of(pid_of(gateway))
        stalled = await StalledClient.open(port_of(gateway))
        await stalled.upgrade(f"/api/kernels/{kernel['id']}/channels?session_id={uuid.uuid4()}",
                              {"Authorization": f"token {KEYS['alice']}"})
        await stalled.send_text(json.dumps(execute_request(JUPYTER_FLOOD)))
        await until(lambda: slow_clients(alice, "jupyter_channels"), lambda n: n == 1, timeout=120,
                    what="the stalled Jupyter client to be cut off")
        stalled.unstall()
        code, reason = close_frame(await stalled.read_all()) or (None, "")
        stalled.close()
        assert code == 1008 and "too slow" in reason
        grown = memory_of(pid_of(gateway))["peak"] - before["peak"]
        assert grown < DEFAULT_SEND_BUFFER + PEAK_GROWTH, f"peak memory grew by {grown / MiB:.0f} MiB"
        # The kernel went on (and finished), and serves the next client.
        await until(lambda: alice.get(f"/api/kernels/{kernel['id']}"), lambda r: r.json()["execution_state"] == "idle",
                    timeout=120, what="the kernel to finish the flood")
        assert (await run(alice, kernel["id"], "6 * 7"))["result"] == {"text/plain": "42"}
        assert (await alice.get("/health")).status_code == 200


@pytest.mark.parametrize("gateway", [("--max-send-buffer-bytes=1048576",)], indirect=True)
async def test_stream_clients_that_never_read_are_cut_off_and_lose_nothing(gateway: GatewayProcess) -> None:
    two_mib = "import sys\nfor _ in range(2):\n    sys.stdout.write('w' * (1 << 20)); sys.stdout.flush()\n"
    async with gateway.client("alice") as alice:
        sandbox = await create(alice)
        # /stream: six executes, accepted while the first holds; then all of their output comes.
        socket = await StalledClient.open(port_of(gateway))
        await socket.upgrade(f"/api/v1/sandboxes/{sandbox['id']}/stream", {"Authorization": f"Bearer {KEYS['alice']}"})
        for n in range(6):
            await socket.send_text(json.dumps({"type": "execute", "id": n, "code": (HOLD if n == 0 else "") + two_mib}))
        await until(lambda: executions_of(alice, sandbox["id"]), lambda e: len(e) == 6, what="six accepted executes")
        await release(alice, sandbox["id"])
        await until(lambda: slow_clients(alice, "stream_socket"), lambda n: n == 1, timeout=120,
                    what="the stalled /stream client to be cut off")
        code, reason = close_frame(await socket.read_all()) or (None, "")
        socket.close()
        assert code == 1008 and "too slow" in reason
        for execution in [await wait_finished(alice, e["id"], timeout=120)
                          for e in await executions_of(alice, sandbox["id"])]:
            assert execution["status"] == "completed" and execution["stdout"] == "w" * (2 * MiB)

        # NDJSON: ended with an error event saying why and where the execution is.
        ndjson = await stalled_execute(gateway, sandbox["id"], two_mib * 2)
        await until(lambda: slow_clients(alice, "http_stream"), lambda n: n == 1, timeout=120,
                    what="the stalled NDJSON client to be cut off")
        data = await ndjson.read_until(b"0\r\n\r\n")
        assert b'"client_too_slow"' in data and b"/api/v1/executions/" in data
        execution = await finished_execution(alice, sandbox["id"], 7)
        assert execution["status"] == "completed" and execution["stdout"] == "w" * (4 * MiB)
        assert (await alice.get("/health")).status_code == 200
        ndjson.close()
