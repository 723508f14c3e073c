"""``run_code`` through the real ``e2b-code-interpreter`` SDK, sync and async.

E2B's result model (text, html, png, data, is_main_result, formats()), logs, errors, the
execution count, streaming callbacks while the code still runs, per-run environment variables,
and what ends an execution: the client hanging up (its ``timeout``) interrupts it, and killing
the sandbox ends the request with E2B's "sandbox was killed" error.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b_code_interpreter.models import Context, OutputMessage, Result

from tests.gateways import GatewayProcess
from tests.stalled import StalledClient, metric
from tests.waiting import until, wait_finished

pytestmark = pytest.mark.docker

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600)
    yield created
    created.kill()


def test_results_logs_and_count(sandbox: Sandbox) -> None:
    execution = sandbox.run_code("print('out'); import sys; print('err', file=sys.stderr); 'text'")
    assert execution.logs.stdout == ["out\n"] and execution.logs.stderr == ["err\n"]
    [result] = execution.results
    assert result.is_main_result and result.text == "text" and result.formats() == ["text"]
    assert execution.text == "text" and execution.error is None
    assert isinstance(execution.execution_count, int) and execution.execution_count >= 1
    again = sandbox.run_code("2 * 21")
    assert again.text == "42" and again.execution_count == execution.execution_count + 1


def test_dataframe_and_matplotlib(sandbox: Sandbox) -> None:
    table = sandbox.run_code("import pandas as pd\npd.DataFrame({'n': [1, 2], 'name': ['a', 'b']})")
    [frame] = table.results
    assert set(frame.formats()) == {"text", "html", "data"}
    assert frame.data == {"n": [1, 2], "name": ["a", "b"]} and "<table" in frame.html
    plot = sandbox.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    [figure] = plot.results
    assert not figure.is_main_result and "png" in figure.formats()
    assert base64.b64decode(figure.png).startswith(PNG)


def test_errors(sandbox: Sandbox) -> None:
    failed = sandbox.run_code("def f():\n    raise ValueError('bad value')\nf()")
    assert failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ValueError", "bad value")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", failed.error.traceback)  # (IPython colours it, as in E2B)
    assert "ValueError: bad value" in plain and "----> 3 f()" in plain
    seen = []
    sandbox.run_code("1/0", on_error=seen.append)
    assert [e.name for e in seen] == ["ZeroDivisionError"]


def test_callbacks_stream_while_the_code_runs(sandbox: Sandbox, e2b_gateway: GatewayProcess, ours: httpx.Client) -> None:
    """The code waits for a file that the stdout callback writes: it can only end if 'ready' came first."""
    stdout: list[OutputMessage] = []
    results: list[Result] = []

    def on_stdout(message: OutputMessage) -> None:
        stdout.append(message)
        if message.line == "ready\n":  # write the file through our own API, beside the kernel
            written = ours.put(f"/api/v1/sandboxes/{sandbox.sandbox_id}/files/go", content=b"1")
            assert written.status_code in (200, 201), written.text

    code = ("import os, time\nprint('ready', flush=True)\n"
            "while not os.path.exists('go'):\n    time.sleep(0.05)\nos.remove('go')\nprint('done')\n"
            "from IPython.display import display\ndisplay('shown')\n'last'")
    execution = sandbox.run_code(code, on_stdout=on_stdout, on_result=results.append, timeout=60)
    assert [m.line for m in stdout] == ["ready\n", "done\n"] and not stdout[0].error
    assert [(r.text, r.is_main_result) for r in results] == [("shown", False), ("last", True)]
    assert execution.logs.stdout == ["ready\n", "done\n"]


def test_envs_apply_to_one_run(sandbox: Sandbox) -> None:
    assert sandbox.run_code("import os; os.environ.get('RUN_ONLY')", envs={"RUN_ONLY": "yes"}).text == "yes"
    assert sandbox.run_code("os.environ.get('RUN_ONLY', 'unset')").text == "unset"


def test_hanging_up_interrupts_and_keeps_state(sandbox: Sandbox) -> None:
    sandbox.run_code("steps = 0")
    with pytest.raises(TimeoutException, match="Execution timed out"):
        sandbox.run_code("import time\nwhile True:\n    steps += 1\n    time.sleep(0.01)", timeout=2)
    # The loop was interrupted (else this would wait behind it), and the kernel kept its state.
    after = sandbox.run_code("steps", timeout=60)
    assert after.error is None and int(after.text) > 0


async def test_a_client_that_does_not_read_is_cut_off_and_the_execution_goes_on(
    sandbox: Sandbox, e2b_gateway: GatewayProcess,
) -> None:
    """Past the send buffer (1 MiB here) the stream ends with an error line; nothing is lost.

    8 MiB of output: the socket buffers of a loopback connection take 4 MiB before a client that
    does not read holds the stream back (and each stream is capped at 5 MiB)."""
    eight_mib = ("import sys\nfor _ in range(4):\n    sys.stdout.write('o' * (1 << 20)); sys.stdout.flush()\n"
                 "    sys.stderr.write('e' * (1 << 20)); sys.stderr.flush()\n")
    async with e2b_gateway.client("alice") as alice:
        before = await slow_clients(alice)
        stalled = await StalledClient.open(int(e2b_gateway.url.rsplit(":", 1)[1]))
        await stalled.post("/e2b/sandbox/execute", json.dumps({"code": eight_mib}).encode(),
                           {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999",
                            "X-Access-Token": sandbox._envd_access_token or "", "Content-Type": "application/json"})
        await until(lambda: slow_clients(alice), lambda n: n == before + 1, timeout=120,
                    what="the stalled E2B client to be cut off")
        data = await stalled.read_until(b"0\r\n\r\n")
        stalled.close()
        assert b'"ClientTooSlow"' in data and b"behind this stream" in data
        execution_id = re.search(rb"X-Execution-Id: ([0-9a-f-]+)", data).group(1).decode()  # type: ignore[union-attr]
        execution = await wait_finished(alice, execution_id, timeout=120)
    assert execution["status"] == "completed" and not execution["truncated"]
    assert execution["stdout"] == "o" * (4 << 20) and execution["stderr"] == "e" * (4 << 20)
    assert sandbox.run_code("6 * 7").text == "42"


async def slow_clients(client: httpx.AsyncClient) -> float:
    return metric((await client.get("/metrics")).text, "code_gateway_slow_clients_total", kind="e2b_stream")


def test_contexts_of_a_sandbox(sandbox: Sandbox) -> None:
    [default] = sandbox.list_code_contexts()
    assert (default.language, default.cwd) == ("python", "/home/user")
    assert sandbox.run_code("'here'", context=default).text == "here"
    with pytest.raises(NotFoundException, match="Context nope not found"):
        sandbox.run_code("1", context=Context("nope", "python", "/"))
    with pytest.raises(SandboxException, match="Only one of context_id or language"):
        httpx_post_both(sandbox)


def httpx_post_both(sandbox: Sandbox) -> None:
    """The SDK refuses both itself; the server answers as E2B's does when a client sends both."""
    response = httpx.post(f"{sandbox._jupyter_url}/execute", json={"code": "1", "context_id": sandbox.sandbox_id,
                                                                   "language": "python"},
                          headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999",
                                   "X-Access-Token": sandbox._envd_access_token or ""})
    assert response.status_code == 400
    raise SandboxException(response.text)


@pytest.mark.parametrize("path, body, field", [
    ("/contexts", {"language": 5}, "language"),
    ("/contexts", {"cwd": []}, "cwd"),
    ("/contexts", {"cwd": [1]}, "cwd"),
    ("/contexts", {"language": "bash", "cwd": {"p": "x"}}, "cwd"),
    ("/execute", {"code": 5}, "code"),
    ("/execute", {"code": "1", "language": ["python"]}, "language"),
    ("/execute", {"code": "1", "context_id": 7}, "context_id"),
    ("/execute", {"code": "1", "env_vars": "A=1"}, "env_vars"),
])
def test_a_wrongly_typed_field_is_400_naming_it_and_starts_nothing(sandbox: Sandbox, ours: httpx.Client, path: str,
                                                                   body: dict[str, object], field: str) -> None:
    before = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/contexts").json()["contexts"]
    executions = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/executions").json()["executions"]
    response = httpx.post(f"{sandbox._jupyter_url}{path}", json=body,
                          headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999",
                                   "X-Access-Token": sandbox._envd_access_token or ""})
    assert response.status_code == 400, response.text
    assert response.text.startswith(f"field '{field}': ") and "is not of type" in response.text, response.text
    assert ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/contexts").json()["contexts"] == before
    assert ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/executions").json()["executions"] == executions


def test_killing_the_sandbox_ends_a_running_execution(e2b_gateway: GatewayProcess) -> None:
    doomed = Sandbox.create(timeout=120)
    started = threading.Event()

    def kill_when_started(message: OutputMessage) -> None:
        if not started.is_set():
            started.set()
            threading.Thread(target=doomed.kill).start()

    with pytest.raises(Exception) as raised:
        execution = doomed.run_code("import time\nprint('go', flush=True)\ntime.sleep(120)",
                                    on_stdout=kill_when_started, timeout=90)
        assert execution.error is not None  # (if the stream ended cleanly, it must say why)
        raise SandboxException(f"{execution.error.name}: {execution.error.value}")
    assert started.is_set()
    assert "killed" in str(raised.value) or "terminated" in str(raised.value)
    assert not doomed.is_running()


async def test_async_sdk(async_sandbox: AsyncSandbox) -> None:
    seen: list[str] = []

    async def on_stdout(message: OutputMessage) -> None:
        seen.append(message.line)

    execution = await async_sandbox.run_code("for i in range(3): print(i)\n{'k': [1, 2]}", on_stdout=on_stdout)
    assert "".join(seen) == "0\n1\n2\n"
    assert execution.results[0].json == {"k": [1, 2]} or execution.results[0].text == "{'k': [1, 2]}"
    failed = await async_sandbox.run_code("raise KeyError('k')")
    assert failed.error is not None and failed.error.name == "KeyError"
    assert (await async_sandbox.get_info()).sandbox_id == async_sandbox.sandbox_id
    assert await async_sandbox.is_running()
    [context] = await async_sandbox.list_code_contexts()
    assert context.language == "python"
