"""Running code over a live NDJSON stream, re-attaching to the same execution when the stream drops.

    execution = await follow_run(connection, sandbox_id, {"code": "print(1)"}, Callbacks(on_stdout=print))

The execute request streams events (``output``, ``clear_output``, ``update_display``, keepalives,
then the final ``execution``). If the connection breaks before the final event, the execution
goes on in the gateway; this module asks ``GET /api/v1/executions/{id}/events?after=N`` for the
events from the ``N``-th on (the ones it has not seen), retrying with backoff while the gateway
cannot be reached. An execution that ended meanwhile comes back as its final event alone, and
the callbacks are then given what they missed from its outputs, so nothing is lost either way.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx

from code_gateway_client.connection import NDJSON_ACCEPT, NOT_SENT, Connection
from code_gateway_client.errors import APIError, ConnectionLost
from code_gateway_client.models import Execution

#: A callback may be a plain function or a coroutine function.
Callback = Callable[[Any], Any]
#: Errors that break a stream part-way (the request reached the gateway).
DROPPED: tuple[type[Exception], ...] = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError,
                                        httpx.WriteError, *NOT_SENT)


@dataclasses.dataclass
class Callbacks:
    #: Text the code wrote to stdout / stderr, chunk by chunk.
    on_stdout: Callback | None = None
    on_stderr: Callback | None = None
    #: Each rich output (``display_data``, ``execute_result``, ``error``) as its nbformat dict.
    on_output: Callback | None = None
    #: The MIME bundle of the last expression's value.
    on_result: Callback | None = None


class StreamEnded(Exception):
    """The stream closed before the final event."""


BROKEN: tuple[type[Exception], ...] = (*DROPPED, StreamEnded)
#: ... and while re-attaching, a gateway that cannot be reached yet (restarting, say).
REATTACHABLE: tuple[type[Exception], ...] = (*BROKEN, ConnectionLost)


@dataclasses.dataclass
class RunState:
    """What a run has delivered so far; ``seen`` counts events as the gateway does (no keepalives)."""

    callbacks: Callbacks
    execution_id: str = ""
    seen: int = 0
    text: dict[str, str] = dataclasses.field(default_factory=lambda: {"stdout": "", "stderr": ""})
    rich: int = 0
    result_given: bool = False
    gap: bool = False
    final: Execution | None = None

    async def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "keepalive":
            return
        self.seen += 1
        self.execution_id = event.get("execution_id") or self.execution_id
        if kind == "output":
            await self.give(event["output"])
        elif kind == "execution":
            final = Execution.from_json(event["execution"])
            if self.gap:
                await self.catch_up(final)
            self.final = final

    async def give(self, output: dict[str, Any]) -> None:
        if output.get("output_type") == "stream":
            name = output.get("name", "stdout")
            self.text[name] = self.text.get(name, "") + output.get("text", "")
            callback = self.callbacks.on_stdout if name == "stdout" else self.callbacks.on_stderr
            await call(callback, output.get("text", ""))
            return
        self.rich += 1
        await call(self.callbacks.on_output, output)
        if output.get("output_type") == "execute_result":
            self.result_given = True
            await call(self.callbacks.on_result, output.get("data") or {})

    async def catch_up(self, final: Execution) -> None:
        """After a gap, hand the callbacks what the final outputs hold beyond what they were given."""
        for name, callback in (("stdout", self.callbacks.on_stdout), ("stderr", self.callbacks.on_stderr)):
            whole, given = getattr(final, name), self.text.get(name, "")
            if whole.startswith(given) and len(whole) > len(given):
                await call(callback, whole[len(given):])
        rich = [o for o in final.outputs if o.get("output_type") != "stream"]
        for output in rich[self.rich:]:
            await call(self.callbacks.on_output, output)
            if output.get("output_type") == "execute_result" and not self.result_given:
                await call(self.callbacks.on_result, output.get("data") or {})


async def call(callback: Callback | None, value: Any) -> None:
    if callback is not None:
        result = callback(value)
        if inspect.isawaitable(result):
            await result


async def consume(response: httpx.Response, state: RunState) -> None:
    """Take every event of a streamed response; ``StreamEnded`` if it closes before the final one."""
    async for line in response.aiter_lines():
        if line.strip():
            await state.take(json.loads(line))
            if state.final is not None:
                return
    raise StreamEnded()


async def follow_run(connection: Connection, sandbox_id: str, body: dict[str, Any], callbacks: Callbacks) -> Execution:
    state = RunState(callbacks)
    timeout = httpx.Timeout(connection.client.timeout.connect, read=connection.stream_timeout)
    try:
        async with connection.stream("POST", f"/api/v1/sandboxes/{sandbox_id}/execute", json=body,
                                     headers=NDJSON_ACCEPT, timeout=timeout) as response:
            state.execution_id = response.headers.get("X-Execution-Id", "")
            await consume(response, state)
    except BROKEN:
        if not state.execution_id:
            raise
    while state.final is None:
        await reattach(connection, state, timeout)
    return state.final


async def reattach(connection: Connection, state: RunState, timeout: httpx.Timeout) -> None:
    """Follow the execution from the events not seen yet; retried with backoff until the policy gives up."""
    state.gap = True
    path = f"/api/v1/executions/{state.execution_id}/events"
    failures = 0
    while True:
        seen = state.seen
        try:
            async with connection.stream("GET", path, params={"after": seen}, headers=NDJSON_ACCEPT,
                                         timeout=timeout) as response:
                await consume(response, state)
                return
        except REATTACHABLE:
            pass
        except APIError as error:
            if error.status not in connection.retry.statuses and error.status < 500:
                raise
        # Progress made on this attempt: the next drop starts its backoff afresh.
        failures = 1 if state.seen > seen else failures + 1
        if failures >= connection.retry.attempts:
            raise ConnectionLost(f"lost the stream of execution {state.execution_id} and could not re-attach; "
                                 "it runs on in the gateway", execution_id=state.execution_id)
        await connection.sleep(connection.retry.delay(failures))
