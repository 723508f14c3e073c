"""The SDK's logic around the network, with a scripted transport: retries, backoff, ``Retry-After``, re-attach.

(That the SDK works against a real gateway is proven in ``test_sdk.py``; these pin the decisions
that a real gateway cannot be made to take on cue.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from code_gateway_client import APIError, AsyncGateway, ConnectionLost, RetryPolicy
from code_gateway_client.aio import AsyncSandbox
from code_gateway_client.models import SandboxInfo
from code_gateway_client.retry import parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]


def gateway(handler: Handler, sleeps: list[float], **retry: Any) -> AsyncGateway:
    gw = AsyncGateway("http://gateway.test", "k", transport=httpx.MockTransport(handler),
                      retry=RetryPolicy(jitter=0, **retry))

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    gw.connection.sleep = sleep
    return gw


def refusals(*responses: httpx.Response) -> Handler:
    queue = list(responses)
    return lambda request: queue.pop(0)


def quota(retry_after: str | None = None, status: int = 429) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": "quota_exceeded", "message": "slow down"}})


async def test_429_waits_as_long_as_retry_after_says() -> None:
    sleeps: list[float] = []
    ok = httpx.Response(200, json={"sandboxes": []})
    async with gateway(refusals(quota("2"), quota("7"), ok), sleeps) as gw:
        assert await gw.sandboxes() == []
    assert sleeps == [2.0, 7.0]


async def test_503_without_retry_after_backs_off_exponentially() -> None:
    sleeps: list[float] = []
    ok = httpx.Response(200, json={"sandboxes": []})
    async with gateway(refusals(quota(status=503), quota(status=503), quota(status=503), ok), sleeps,
                       backoff=0.5) as gw:
        await gw.sandboxes()
    assert sleeps == [0.5, 1.0, 2.0]


async def test_gives_up_with_the_api_error_and_its_code() -> None:
    sleeps: list[float] = []
    async with gateway(refusals(*[quota("1")] * 3), sleeps, attempts=3) as gw:
        with pytest.raises(APIError) as caught:
            await gw.sandboxes()
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (429, "quota_exceeded", 1.0)
    assert sleeps == [1.0, 1.0]


async def test_other_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    missing = httpx.Response(404, json={"error": {"code": "sandbox_not_found", "message": "no sandbox 'x'"}})
    async with gateway(refusals(missing), sleeps) as gw:
        with pytest.raises(APIError) as caught:
            await gw.sandbox("x")
    assert caught.value.code == "sandbox_not_found" and sleeps == []


async def test_a_refused_connection_is_retried_then_reported() -> None:
    sleeps: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with gateway(refuse, sleeps, attempts=4, backoff=0.1) as gw:
        with pytest.raises(ConnectionLost):
            await gw.sandboxes()
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert RetryPolicy(max_backoff=10).delay(1, "3600") == 10


# -- re-attaching a dropped stream ----------------------------------------------------------


class Dropping(httpx.AsyncByteStream):
    """A response body that sends some lines, then breaks like a cut connection."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.lines = lines

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"
        raise httpx.ReadError("connection reset by peer")


def out(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"type": "output", "output": {"output_type": "stream", "name": name, "text": text}, "execution_id": "e1"}


def final(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    stdout = "".join(o["text"] for o in outputs if o["output_type"] == "stream")
    return {"type": "execution", "execution_id": "e1", "execution": {
        "id": "e1", "sandbox_id": "s1", "status": "completed", "outputs": outputs, "stdout": stdout, "stderr": "",
        "result": None, "error": None}}


def ndjson(events: list[dict[str, Any]]) -> httpx.Response:
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return httpx.Response(200, headers={"Content-Type": "application/x-ndjson", "X-Execution-Id": "e1"}, content=body)


async def run_through(events_answer: Callable[[int], httpx.Response]) -> tuple[Any, list[str], list[Any], list[int]]:
    afters: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, headers={"X-Execution-Id": "e1"},
                                  stream=Dropping([out("0\n"), {"type": "keepalive"}, out("1\n")]))
        assert request.url.path == "/api/v1/executions/e1/events"
        afters.append(int(request.url.params["after"]))
        return events_answer(afters[-1])

    sleeps: list[float] = []
    texts: list[str] = []
    rich: list[Any] = []
    async with gateway(handler, sleeps) as gw:
        sandbox = AsyncSandbox(gw, SandboxInfo.from_json({"id": "s1"}))
        execution = await sandbox.run("...", on_stdout=texts.append, on_output=rich.append)
    return execution, texts, rich, afters


async def test_a_dropped_stream_resumes_from_the_events_not_seen() -> None:
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}, "metadata": {}}
    outputs = [{"output_type": "stream", "name": "stdout", "text": "0\n1\n2\n"}, png]
    execution, texts, rich, afters = await run_through(
        lambda after: ndjson([out("2\n"), {"type": "output", "output": png, "execution_id": "e1"}, final(outputs)]))
    assert afters == [2]  # two events seen (keepalives are not counted)
    assert texts == ["0\n", "1\n", "2\n"] and rich == [png]
    assert execution.stdout == "0\n1\n2\n" and execution.images()[0].data.startswith(b"\x89PNG")


async def test_an_execution_that_ended_meanwhile_gives_the_callbacks_what_they_missed() -> None:
    png = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}, "metadata": {}}
    outputs = [{"output_type": "stream", "name": "stdout", "text": "0\n1\n2\n3\n"}, png]
    execution, texts, rich, afters = await run_through(lambda after: ndjson([final(outputs)]))
    assert "".join(texts) == "0\n1\n2\n3\n" and texts[-1] == "2\n3\n"
    assert rich == [png]
    assert execution.status == "completed"


async def test_reattach_keeps_trying_while_the_gateway_is_away() -> None:
    answers = [httpx.Response(502), httpx.Response(503), None]

    def answer(after: int) -> httpx.Response:
        response = answers.pop(0)
        return response if response is not None else ndjson([out("2\n"), final(
            [{"output_type": "stream", "name": "stdout", "text": "0\n1\n2\n"}])])

    execution, texts, _, afters = await run_through(answer)
    assert afters == [2, 2, 2]
    assert texts == ["0\n", "1\n", "2\n"] and execution.stdout == "0\n1\n2\n"
