"""The sandbox image's kernel imports ipykernel lean (kernels/launcher/): what an idle kernel never
uses is not imported, and each of those parts works on first use as in a stock kernel.

Both kernels are the image's own (``tests.image_kernels``): the sandbox's (the image's
``ipykernel_launcher``, the gateway's profile) and a stock one (``python3 -m ipykernel``), the
latter showing that the modules checked for are ones a stock kernel does import.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.provisioners.docker import default_image
from tests.conftest import docker_or_fail
from tests.image_kernels import SANDBOX_COMMAND, STOCK_COMMAND, image_kernel

pytestmark = pytest.mark.docker

TIMEOUT = 60
#: Left out of an idle sandbox kernel (kernels/launcher/code_gateway_lean.py).
LEFT_OUT = ["IPython.terminal.embed", "debugpy", "jedi", "parso", "pexpect", "prompt_toolkit", "psutil",
            "pydoc", "pygments.lexers", "stack_data", "urllib.request"]
IMPORTED = f"import sys, json; print(json.dumps([m for m in {LEFT_OUT!r} if m in sys.modules]))"


async def reply_to(client: Any, msg_id: str, channel: str = "shell") -> dict[str, Any]:
    get = client.get_shell_msg if channel == "shell" else client.get_control_msg
    while True:
        msg = await get(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg  # type: ignore[no-any-return]


async def run(client: Any, code: str) -> tuple[str, list[dict[str, Any]]]:
    """Runs ``code``: (its stdout, its other outputs).

    As the gateway runs code (gateway/execution/connection.py): without ``stop_on_error``, which
    would have the kernel abort what comes in shortly after an error (the traceback step's next
    run, on a busy machine).
    """
    msg_id = client.execute(code, stop_on_error=False)
    text, outputs = [], []
    while True:
        msg = await client.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] in ("execute_result", "display_data", "error"):
            outputs.append({"type": msg["msg_type"], **msg["content"]})
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = await reply_to(client, msg_id)
    assert reply["content"]["status"] != "aborted", f"the kernel aborted {code!r}"
    return "".join(text), outputs


async def started(km: Any) -> Any:
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    await client.wait_for_ready(timeout=TIMEOUT)
    return client


async def test_a_stock_kernel_imports_what_the_sandbox_kernel_leaves_out() -> None:
    docker_or_fail().close()
    async with image_kernel(default_image(), command=STOCK_COMMAND) as km:
        client = await started(km)
        try:
            text, _ = await run(client, IMPORTED)
        finally:
            client.stop_channels()
    assert sorted(json.loads(text)) == sorted(LEFT_OUT)


async def test_the_sandbox_kernel_imports_each_left_out_part_when_first_used() -> None:
    docker_or_fail().close()
    async with image_kernel(default_image(), command=SANDBOX_COMMAND, sandbox_profile=True) as km:
        client = await started(km)
        try:
            await check_left_out_then_used(client)
        finally:
            client.stop_channels()


async def check_left_out_then_used(client: Any) -> None:
    text, _ = await run(client, IMPORTED)
    assert json.loads(text) == [], "an idle sandbox kernel has imported none of them"
    text, _ = await run(client, "print(get_ipython().Completer.use_jedi)")
    assert text.strip() == "True", "completion still asks jedi by default"

    # Completion by jedi: only jedi knows x[0] is an int, and gives types and signatures.
    reply = (await reply_to(client, client.complete("x = [1]\nx[0].bit_l")))["content"]
    assert reply["matches"] == ["bit_length"]
    assert reply["metadata"]["_jupyter_types_experimental"][0]["signature"] == "() -> int"
    text, _ = await run(client, "import sys; print('jedi' in sys.modules, type(sys.modules['IPython.core.completer'].jedi))")
    assert text.strip() == "True <class 'module'>", "the completer holds the real jedi after its first use"

    # A traceback (stack_data, pydoc, pygments), as a stock kernel formats it.
    _, outputs = await run(client, "def f():\n    return 1 / 0\nf()")
    assert [o["ename"] for o in outputs] == ["ZeroDivisionError"]
    assert any("return 1 / 0" in line or "1\x1b" in line for line in outputs[0]["traceback"])
    assert len(outputs[0]["traceback"]) >= 3

    # Shell commands (pexpect), inspection, IPython.embed, %load's urlopen.
    text, _ = await run(client, "!echo hi from the shell")
    assert text.strip() == "hi from the shell"
    text, _ = await run(client, "lines = !echo captured\nprint(lines)")
    assert text.strip() == "['captured']"
    inspected = (await reply_to(client, client.inspect("zip")))["content"]
    assert inspected["found"] and "zip" in inspected["data"]["text/plain"]
    text, _ = await run(client, "from IPython import embed; import IPython\n"
                                "print(embed.__module__, IPython.embed is embed)")
    assert text.strip() == "IPython.terminal.embed True"
    text, _ = await run(client, "import IPython.core.magics.code as code\n"
                                "print(code.urlopen('file:///etc/hostname').read() != b'')\n"
                                "import urllib.request; print(code.urlopen is urllib.request.urlopen)")
    assert text.split() == ["True", "True"], "urlopen works, then %load and %pastebin's is the real one"

    # The kernel's own psutil (usage on the control channel), then user code's debugpy.
    msg = client.session.msg("usage_request", {})
    client.control_channel.send(msg)
    usage = (await reply_to(client, msg["header"]["msg_id"], "control"))["content"]
    assert usage["kernel_memory"] > 0 and usage["cpu_count"] >= 1
    text, _ = await run(client, "import ipykernel.kernelbase as kernelbase, psutil\n"
                                "print(kernelbase.psutil is psutil)")
    assert text.strip() == "True", "the kernel holds the real psutil after its first use"
    text, _ = await run(client, "import debugpy; print(bool(debugpy.__version__))")
    assert text.strip() == "True", "user code may still import debugpy"

    # What the gateway's profile adds still works: plots and tables.
    _, outputs = await run(client, "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
    assert [o["type"] for o in outputs] == ["display_data"] and "image/png" in outputs[0]["data"]
    _, outputs = await run(client, "import pandas as pd; pd.DataFrame({'a': [1, 2]})")
    assert "application/vnd.code-gateway.table+json" in outputs[0]["data"]
    text, _ = await run(client, "%history -l 1")
    assert "DataFrame" in text
