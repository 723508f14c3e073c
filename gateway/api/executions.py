"""Running code and reading the history: execute, list a sandbox's executions, fetch one, follow one.

``GET /executions/{id}/events?after=N`` re-attaches a client whose stream broke: with the same
``Accept`` (NDJSON or SSE) as the execute request, it streams that execution's events from the
``N``-th on (counting every event but keepalives) while it runs, then the final Execution. Once it
has ended, the answer is the final ``execution`` event alone: its ``outputs`` hold everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from gateway.api import schemas
from gateway.api.backpressure import DEFAULT_SEND_BUFFER, TOO_SLOW, BehindWatch, end_stream, too_slow_message
from gateway.api.base import MAX_OFFSET, error_body
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.api.streams import (
    ENCODERS,
    JSON,
    NDJSON,
    SSE,
    EventEncoder,
    cut_short,
    hold_end,
    negotiate,
    write_event,
    write_large_held,
)
from gateway.errors import GatewayError, InvalidRequest
from gateway.execution.feed import ExecutionFeed
from gateway.execution.model import Execution
from gateway.jsonbytes import LARGE, Buffer, pieces
from gateway.sandboxes.inputs import check_code
from gateway.sandboxes.manager import RunningExecution

log = logging.getLogger(__name__)

class StreamingHandler(SandboxAPIHandler):
    """Writes one execution's events as a live stream, each flush awaited (backpressure).

    A client more than ``max_send_buffer`` bytes behind gets an ``error`` event
    (``client_too_slow``) and the end of the stream; if it does not take even that within
    ``CUT_GRACE`` seconds, its connection is closed.
    """

    def initialize(self, keepalive: float = 15.0, max_send_buffer: int = DEFAULT_SEND_BUFFER,  # type: ignore[override]
                   **base: Any) -> None:
        super().initialize(**base)
        self.keepalive = keepalive
        self.max_send_buffer = max_send_buffer
        self._cut_off = False

    async def stream(self, encoder: EventEncoder, running: RunningExecution, start: int = 0) -> None:
        execution_id = running.execution.id
        self.set_header("Content-Type", encoder.media_type)
        self.set_header("Location", f"/api/v1/executions/{execution_id}")
        self.set_header("X-Execution-Id", execution_id)
        self.set_header("X-Accel-Buffering", "no")  # tell nginx-style proxies not to buffer the stream
        # Tornado turns Nagle back on between keep-alive requests; each event must leave at once.
        if isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.stream.set_nodelay(True)
        cursor = running.feed.cursor(start)
        watch = BehindWatch(self.max_send_buffer, behind=lambda: cursor.behind,
                            overrun=lambda: self._too_slow(encoder, execution_id))
        watch.start()
        try:
            async for event in cursor.follow(idle=self.keepalive, early_end=True):
                if self._cut_off:
                    break
                # Awaiting each flush is the backpressure: a slow client slows only its own stream.
                if event is None:
                    await write_event(self, encoder.keepalive)
                    continue
                parts = encoder.pieces({**event, "execution_id": execution_id})
                if cursor.took_last:  # the final event
                    await self._write_final(parts, running.feed, encoder, execution_id)
                else:
                    await write_event(self, parts)
        except StreamClosedError:
            return  # on_connection_close has seen to it
        finally:
            watch.stop()
        if not self._cut_off:  # (else _too_slow ended it)
            self.finish()

    async def _write_final(self, parts: list[Buffer], feed: ExecutionFeed, encoder: EventEncoder,
                           execution_id: str) -> None:
        """The final event, once its execution is durable; a large one leaves meanwhile, all but its end.

        If it never will be (the gateway stopped first), the client gets no final event: an
        ``error`` event instead, or, if the event had begun, a connection closed mid-event.
        """
        large = sum(len(part) for part in parts) >= LARGE
        head, end = hold_end(parts) if large else ([], b"")
        try:
            if large:
                await write_event(self, head)
                await self._pad_until(feed.stored())
            else:
                await feed.stored()
        except GatewayError as never:
            log.warning("execution %s: its stream ends without its result: %s", execution_id, never)
            if self._cut_off:  # (the response is over already)
                return
            if not large:
                error = error_body(never.code, never.message)
                await write_event(self, encoder.encode({"type": "error", "execution_id": execution_id, **error}))
                return
            cut_short(self)
            raise StreamClosedError() from None  # (the response is over: stream() must not finish it)
        if self._cut_off:  # too slow meanwhile: _too_slow ended the response, nothing may follow
            return
        await write_event(self, [end] if large else parts)

    async def _pad_until(self, stored: Awaitable[None]) -> None:
        """Await ``stored``, sending a space each ``keepalive`` seconds meanwhile: the held event is
        not over (JSON takes whitespace before its last ``}``, SSE's data line too), and a proxy
        must not take a long hold (a store outage) for a dead stream."""
        waiting = asyncio.ensure_future(stored)
        try:
            while not (await asyncio.wait({waiting}, timeout=self.keepalive))[0]:
                if self._cut_off:  # (ended by _too_slow: no more writes, but the outcome still counts)
                    continue
                await write_event(self, b" ")
            waiting.result()
        finally:
            waiting.cancel()

    def _too_slow(self, encoder: EventEncoder, execution_id: str) -> None:
        """End the stream of a client too far behind: one last ``error`` event, then the end (or the
        connection, if it does not even take that)."""
        log.info("execution %s: ending the stream of a client over %d bytes behind", execution_id,
                 self.max_send_buffer)
        self.sandboxes.metrics.slow_clients.labels(kind="http_stream").inc()
        self._cut_off = True
        error = error_body(TOO_SLOW, too_slow_message(self.max_send_buffer, execution_id))
        end_stream(self, encoder.encode({"type": "error", "execution_id": execution_id, **error}))


class ExecuteHandler(StreamingHandler):
    """``POST /sandboxes/{id}/execute``: the whole Execution when it ends, or a live stream of it.

    A client that goes away loses nothing: the execution runs on and is stored (``Location``
    and ``X-Execution-Id`` say where to fetch it), unless it asked for
    ``interrupt_on_disconnect``.
    """

    def initialize(self, keepalive: float = 15.0, **base: Any) -> None:  # type: ignore[override]
        super().initialize(keepalive, **base)
        self.running: RunningExecution | None = None
        self.interrupt_on_disconnect = False

    async def post(self, sandbox_id: str) -> None:
        body = self.json_body(schemas.execute)
        code = check_code(body["code"])
        encoder = ENCODERS.get(negotiate(self.request.headers.get("Accept", "")))  # (None: one JSON document)
        where = {"context": body.get("context"), "language": body.get("language")}
        if encoder is None:
            running = await self.sandboxes.submit(sandbox_id, self.user, code, timeout=body.get("timeout"), **where)
            final = await self.sandboxes.ended(running)
            await write_large_held(self, pieces(final), lambda: self.sandboxes.finished(running))
            return
        self.interrupt_on_disconnect = body.get("interrupt_on_disconnect", False)
        self.running = await self.sandboxes.submit(sandbox_id, self.user, code, timeout=body.get("timeout"), **where)
        await self.stream(encoder, self.running)

    def on_connection_close(self) -> None:
        if self.running is not None and self.interrupt_on_disconnect:
            self.sandboxes.cancel_soon(self.running)


class SandboxExecutionsHandler(SandboxAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        limit, offset = self.paging()
        executions = await self.sandboxes.list_executions(sandbox_id, self.user, limit=limit, offset=offset)
        self.write_json({"executions": [e.to_public() for e in executions]})


class ExecutionHandler(SandboxAPIHandler):
    async def routed_sandbox(self) -> str | None:
        return await self.sandboxes.sandbox_of_execution(self.path_args[0])

    async def get(self, execution_id: str) -> None:
        self.write_json((await self.sandboxes.get_execution(execution_id, self.user)).to_public())


class ExecutionEventsHandler(StreamingHandler):
    async def routed_sandbox(self) -> str | None:
        return await self.sandboxes.sandbox_of_execution(self.path_args[0])  # (where its live feed is)

    async def get(self, execution_id: str) -> None:
        try:
            after = int(self.get_argument("after", "0"))
        except ValueError:
            raise InvalidRequest("query parameter 'after' must be an integer") from None
        if not 0 <= after <= MAX_OFFSET:
            raise InvalidRequest(f"'after' must be 0..{MAX_OFFSET}")
        # (JSON asked for by name is NDJSON here: one JSON document a line)
        chosen = negotiate(self.request.headers.get("Accept", ""), (NDJSON, SSE, JSON))
        encoder = ENCODERS.get(chosen, ENCODERS[NDJSON])
        execution = await self.sandboxes.get_execution(execution_id, self.user)  # ownership, 404
        running = self.sandboxes.running(execution_id)
        if running is None:
            running = ended(execution.to_public())
            after = 0
        await self.stream(encoder, running, after)


def ended(public: dict[str, Any]) -> RunningExecution:
    """A finished execution as a feed holding only its final event."""
    feed = ExecutionFeed()
    feed.close({"type": "execution", "execution": public})
    return RunningExecution(Execution.from_record(public), feed)
