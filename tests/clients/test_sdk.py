"""The Python SDK against a real gateway with Docker sandboxes: blocking and asyncio, over loopback HTTP."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pandas
import pytest

from code_gateway_client import (
    APIError,
    AsyncGateway,
    ExecutionError,
    Gateway,
    RetryPolicy,
)
from tests.clients.proxy import CuttableProxy
from tests.gateways import KEYS, GatewayProcess, auth
from tests.waiting import wait_finished

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
FRAME = "import pandas as pd\npd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', None]}, index=[10, 20, 30])"

pytestmark = pytest.mark.docker


@pytest.fixture
def gateway(client_gateway: GatewayProcess) -> Any:
    with Gateway(client_gateway.url, KEYS["alice"]) as gw:
        yield gw


def test_run_streams_keeps_state_and_types_the_results(gateway: Gateway) -> None:
    with gateway.create_sandbox(metadata={"test": "sdk"}) as sandbox:
        assert sandbox.info.status == "running" and sandbox.info.metadata == {"test": "sdk"}
        chunks: list[str] = []
        results: list[dict[str, Any]] = []
        sandbox.run("x = 41")
        execution = sandbox.run("import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr)\nx + 1",
                                on_stdout=chunks.append, on_result=results.append)
        assert execution.ok and execution.text == "42" and execution.stdout == "a\n" and execution.stderr == "b\n"
        assert chunks == ["a\n"] and results == [{"text/plain": "42"}]

        plot = sandbox.run(PLOT)
        [image] = plot.images()
        assert image.mime == "image/png" and image.data.startswith(b"\x89PNG\r\n\x1a\n")
        import matplotlib.image

        assert matplotlib.image.imread(io.BytesIO(image.data), format="png").shape[2] in (3, 4)  # it decodes

        [table] = sandbox.run(FRAME).tables()
        assert table.columns == ["a", "b"] and table.rows == [[1, "x"], [2, "y"], [3, None]] and not table.truncated
        frame = table.to_pandas()
        pandas.testing.assert_frame_equal(
            frame, pandas.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]}, index=[10, 20, 30]), check_dtype=False)

        failed = sandbox.run("1 / 0")
        assert failed.status == "failed" and failed.error is not None and failed.error.ename == "ZeroDivisionError"
        with pytest.raises(ExecutionError) as caught:
            sandbox.run("raise KeyError('k')", raise_on_error=True)
        assert caught.value.ename == "KeyError" and caught.value.code == "exception"
        assert any("KeyError" in line for line in caught.value.traceback)

        history = sandbox.executions()
        assert [e.code for e in history][:2] == ["x = 41", execution.code]
        assert gateway.execution(execution.id).stdout == "a\n"
        notebook = sandbox.notebook()
        assert isinstance(notebook, nbformat.NotebookNode) and len(notebook.cells) == len(history)
        nbformat.validate(notebook)
        sandbox_id = sandbox.id
    assert gateway.sandbox(sandbox_id).info.status == "terminated"  # deleted on leaving the block


def test_files_stream_both_ways_with_progress(gateway: Gateway, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * 12_000)  # ~3 MiB: several chunks
    with gateway.create_sandbox() as sandbox:
        progress: list[tuple[int, int | None]] = []
        entry = sandbox.files.upload("in/big.bin", local, on_progress=lambda done, total: progress.append((done, total)))
        assert entry.size == local.stat().st_size and entry.path == "in/big.bin"
        assert len(progress) >= 3 and progress[-1] == (entry.size, entry.size)
        assert [p[0] for p in progress] == sorted(p[0] for p in progress)
        assert sandbox.run("len(open('in/big.bin', 'rb').read())").text == str(entry.size)

        sandbox.files.upload("note.txt", io.BytesIO(b"hello"))
        assert sandbox.files.download("note.txt") == b"hello"
        down: list[tuple[int, int | None]] = []
        target = tmp_path / "back.bin"
        assert sandbox.files.download("in/big.bin", target, on_progress=lambda d, t: down.append((d, t))) == entry.size
        assert target.read_bytes() == local.read_bytes() and down[-1] == (entry.size, entry.size)
        names = {e.name: e.type for e in sandbox.files.list()}
        assert names["in"] == "directory" and names["note.txt"] == "file"
        sandbox.files.delete("in")
        assert "in" not in {e.name for e in sandbox.files.list()}
        with pytest.raises(APIError) as caught:
            sandbox.files.download("in/big.bin", tmp_path / "missing.bin")
        assert caught.value.code == "file_not_found" and not (tmp_path / "missing.bin").exists()


def test_interrupt_restart_and_api_errors(gateway: Gateway, client_gateway: GatewayProcess) -> None:
    with gateway.create_sandbox() as sandbox:
        started = threading.Event()
        finished: list[Any] = []
        thread = threading.Thread(target=lambda: finished.append(sandbox.run(
            "import time\nprint('go', flush=True)\ntime.sleep(120)", on_stdout=lambda _: started.set())))
        thread.start()
        assert started.wait(60)
        sandbox.interrupt()
        thread.join(60)
        assert finished[0].status == "cancelled"
        sandbox.run("y = 1")
        sandbox.restart()
        assert sandbox.run("y").error.ename == "NameError"  # type: ignore[union-attr]
    with pytest.raises(APIError) as caught:
        gateway.sandbox("0000")
    assert (caught.value.status, caught.value.code) == (404, "sandbox_not_found")
    with Gateway(client_gateway.url, "wrong-key", retry=RetryPolicy(attempts=1)) as stranger:
        with pytest.raises(APIError) as caught:
            stranger.sandboxes()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


def test_key_and_url_from_the_environment(client_gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODE_GATEWAY_URL", client_gateway.url)
    monkeypatch.setenv("CODE_GATEWAY_API_KEY", KEYS["bob"])
    with Gateway() as gateway, gateway.create_sandbox() as sandbox:
        assert sandbox.info.owner == "bob"
        assert sandbox.id in {s.id for s in gateway.sandboxes(status="running")}


def test_listing_reads_every_page(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway pages GET /sandboxes; the SDK follows the pages (one sandbox per page here)."""
    import code_gateway_client.aio

    monkeypatch.setattr(code_gateway_client.aio, "PAGE", 1)
    with gateway.create_sandbox() as first, gateway.create_sandbox() as second, gateway.create_sandbox() as third:
        listed = [s.id for s in gateway.sandboxes(status="running")]
        assert [i for i in listed if i in {first.id, second.id, third.id}] == [first.id, second.id, third.id]
        assert len(listed) == len(set(listed))


async def test_async_sdk(client_gateway: GatewayProcess, tmp_path: Path) -> None:
    async with AsyncGateway(client_gateway.url, KEYS["alice"]) as gateway:
        async with await gateway.create_sandbox() as sandbox:
            seen: list[str] = []

            async def on_stdout(text: str) -> None:
                seen.append(text)

            execution = await sandbox.run("for i in range(3): print(i, flush=True)\n'ok'", on_stdout=on_stdout)
            assert "".join(seen) == "0\n1\n2\n" and execution.text == "'ok'"
            await sandbox.files.upload("a.txt", b"abc")
            assert await sandbox.files.download("a.txt") == b"abc"
            assert [e.name for e in await sandbox.files.list()] == ["a.txt"]
            [table] = (await sandbox.run(FRAME)).tables()
            assert table.row_count == 3
            assert (await sandbox.notebook()).cells[0].source.startswith("for i")
            assert [s.id for s in await gateway.sandboxes(status="running")].count(sandbox.id) == 1
            sandbox_id = sandbox.id
        assert (await gateway.sandbox(sandbox_id)).info.status == "terminated"


WAIT_FOR_GO = ("import os, time\nprint('0', flush=True)\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"
               "print('1', flush=True)\nprint('2', flush=True)\n'end'")


async def test_a_cut_stream_reattaches_to_the_live_execution(client_gateway: GatewayProcess) -> None:
    port = int(client_gateway.url.rsplit(":", 1)[1])
    async with CuttableProxy(port) as proxy, AsyncGateway(proxy.url, KEYS["alice"],
                                                          retry=RetryPolicy(backoff=0.05)) as gateway:
        async with await gateway.create_sandbox() as sandbox, \
                httpx.AsyncClient(base_url=client_gateway.url, headers=auth("alice")) as direct:
            seen: list[str] = []

            async def on_stdout(text: str) -> None:
                seen.append(text)
                if text == "0\n":
                    before = proxy.connections
                    proxy.cut()  # the stream breaks while the code waits for 'go'
                    await direct.put(f"/api/v1/sandboxes/{sandbox.id}/files/go", content=b"")
                    assert proxy.connections == before

            execution = await sandbox.run(WAIT_FOR_GO, on_stdout=on_stdout)
    assert execution.status == "completed" and execution.text == "'end'"
    assert "".join(seen) == "0\n1\n2\n" and execution.stdout == "0\n1\n2\n"


async def test_a_stream_cut_until_the_execution_ended_loses_nothing(client_gateway: GatewayProcess) -> None:
    port = int(client_gateway.url.rsplit(":", 1)[1])
    async with CuttableProxy(port) as proxy, AsyncGateway(proxy.url, KEYS["alice"],
                                                          retry=RetryPolicy(backoff=0.05, attempts=8)) as gateway:
        async with await gateway.create_sandbox() as sandbox, \
                httpx.AsyncClient(base_url=client_gateway.url, headers=auth("alice")) as direct:
            seen: list[str] = []
            results: list[dict[str, Any]] = []

            async def on_stdout(text: str) -> None:
                seen.append(text)
                if text != "0\n":
                    return
                proxy.cut()  # and the client reads nothing until the execution has ended
                await direct.put(f"/api/v1/sandboxes/{sandbox.id}/files/go", content=b"")
                [running] = (await direct.get(f"/api/v1/sandboxes/{sandbox.id}/executions")).json()["executions"]
                await wait_finished(direct, running["id"])

            execution = await sandbox.run(WAIT_FOR_GO, on_stdout=on_stdout, on_result=results.append)
    assert execution.status == "completed"
    assert "".join(seen) == "0\n1\n2\n" and results == [{"text/plain": "'end'"}]


def test_llm_tools_run_calls_and_answer_in_each_apis_shape(gateway: Gateway) -> None:
    import base64
    import json

    with gateway.create_sandbox() as sandbox:
        tools = sandbox.tools
        assert {t["function"]["name"] for t in tools.openai()} >= {"run_code", "list_files", "read_file", "write_file"}
        assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object" for t in tools.openai())
        assert {t["name"] for t in tools.anthropic()} == {t["function"]["name"] for t in tools.openai()}

        # OpenAI chat completions: arguments arrive as a JSON string.
        call = {"id": "call_1", "type": "function",
                "function": {"name": "run_code", "arguments": json.dumps({"code": PLOT + "\nprint('plotted')"})}}
        result = tools.handle(call)
        assert not result.is_error and "plotted" in result.text and len(result.images) == 1
        tool_message, image_message = result.openai()
        assert tool_message == {"role": "tool", "tool_call_id": "call_1", "content": result.text}
        url = image_message["content"][1]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")

        # Anthropic: a tool_use block; the result is a tool_result block with an image block.
        block = {"type": "tool_use", "id": "toolu_1", "name": "run_code", "input": {"code": FRAME}}
        answer = tools.handle(block).anthropic()
        assert answer["tool_use_id"] == "toolu_1" and answer["is_error"] is False
        assert "a,b" in answer["content"][0]["text"] and "10,1,x" in answer["content"][0]["text"]  # table as CSV

        failed = tools.handle({"type": "tool_use", "id": "toolu_2", "name": "run_code", "input": {"code": "1/0"}})
        assert failed.is_error and "ZeroDivisionError" in failed.text and "\x1b[" not in failed.text
        tools.handle({"type": "tool_use", "id": "t3", "name": "write_file",
                      "input": {"path": "a/b.txt", "content": "hi"}})
        read = tools.handle({"type": "tool_use", "id": "t4", "name": "read_file", "input": {"path": "a/b.txt"}})
        assert read.text == "hi"
        assert "a/b.txt" in tools.handle({"type": "tool_use", "id": "t5", "name": "list_files",
                                          "input": {"path": "a"}}).text
        missing = tools.handle({"type": "tool_use", "id": "t6", "name": "read_file", "input": {"path": "nope"}})
        assert missing.is_error and "file_not_found" in missing.text


def test_pause_and_resume_keep_variables_and_files(gateway: Gateway) -> None:
    with gateway.create_sandbox() as sandbox:
        sandbox.run("x = 41")
        sandbox.files.upload("kept.txt", b"still here")
        paused = sandbox.pause()
        assert paused.status == "paused" and sandbox.info.status == "paused"
        resumed = sandbox.resume()
        assert resumed.status == "running"
        assert "x" in resumed.raw["restore"]["variables"]
        assert sandbox.run("x + 1").text == "42"
        assert sandbox.files.download("kept.txt") == b"still here"
