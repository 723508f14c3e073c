"""An attack from inside a sandbox: one multipart kernel message far larger than anything it sent.

pyzmq sends frames without copying them, so code in the kernel can send one message of 64
frames that are all the same 8 MiB buffer: the sandbox spends 8 MiB, the socket carries 512 MiB.
libzmq assembles a whole multipart message before its reader sees any part of it, so without
the gateway's relay (``gateway.provisioners.relay``) the gateway would hold all 512 MiB at once
(the same with 20 GiB: an OOM-killed gateway, every tenant's sandboxes with it). The gateway's
resident memory must stay far below that, the execution must end normally and say that output
was lost, and the sandbox must answer correctly afterwards. Under runc and gVisor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateways import run
from tests.provisioned import docker_as_the_gateway, docker_gateway_of_each_runtime, runtime  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

FRAMES, FRAME_BYTES = 64, 8 << 20

#: One display_data for the running execution, signed with the kernel's key, with 64 buffers
#: that are all one 8 MiB buffer (sent without copying); then ordinary output.
AMPLIFY = f'''
_k = get_ipython().kernel
_msg = _k.session.msg("display_data", {{"data": {{"text/plain": "big"}}, "metadata": {{}}}},
                      parent=_k.get_parent("shell"))
_buffer = memoryview(bytearray({FRAME_BYTES}))
_k.iopub_socket.send_multipart([b"display_data", *_k.session.serialize(_msg), *[_buffer] * {FRAMES}], copy=False)
del _k, _msg, _buffer
print("after")
'''


def peak_rss_reset() -> None:
    """Start counting this process's peak resident memory afresh (proc(5): clear_refs, 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """This process's (the in-process gateway's) peak resident memory since the last reset, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


async def test_one_amplified_message_neither_grows_the_gateway_nor_breaks_the_sandbox(
    alice: httpx.AsyncClient, sandbox: dict[str, Any]
) -> None:
    sandbox_id = sandbox["id"]
    assert (await run(alice, sandbox_id, "print('warm')"))["stdout"] == "warm\n"
    peak_rss_reset()
    before = peak_rss()
    started = time.monotonic()
    execution = await run(alice, sandbox_id, AMPLIFY, timeout=120)
    grown = peak_rss() - before
    print(f"gateway peak RSS grew by {grown >> 20} MiB for a {FRAMES * FRAME_BYTES >> 20} MiB message, "
          f"in {time.monotonic() - started:.1f} s")
    assert execution["status"] == "completed", execution
    assert execution["stdout"] == "after\n"
    assert grown < 160 << 20, f"the gateway grew by {grown >> 20} MiB"
    notes = [output["text"] for output in execution["outputs"] if output.get("name") == "stderr"]
    assert any("larger than" in note for note in notes), execution["outputs"]
    assert execution["truncated"] is True

    # The sandbox goes on: the next execution's output is whole and correct.
    after = await run(alice, sandbox_id, "print(sum(range(10)))\n6 * 7")
    assert after["status"] == "completed" and after["stdout"] == "45\n"
    assert after["result"]["text/plain"] == "42"
