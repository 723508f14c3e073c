"""``/api/v1/sandboxes/{id}/stream``: execute and interrupt over one WebSocket.

Client -> server::

    {"type": "execute", "id": "c1", "code": "print(1)", "timeout": 30}   # also "context" or "language"
    {"type": "interrupt"}

Server -> client, each tagged with the request's ``id`` and the ``execution_id``::

    {"type": "accepted", ...}  then  {"type": "output", "output": {...}} ...  then
    {"type": "execution", "execution": {...}}      (or {"type": "error", "error": {...}})

Executes run in the order sent, one at a time. A client that falls more than
``max_send_buffer`` bytes behind (events of its executions not yet sent) is closed with code 1008.
Authentication: ``Authorization: Bearer KEY`` or, for browsers (which cannot set headers on a
WebSocket), ``?token=KEY``. Browser origins must be
the gateway's own or listed in ``allow_origins``. When the socket closes, executions go on and
are stored, unless they asked for ``interrupt_on_disconnect``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import Any

from tornado import websocket

from gateway.api import schemas
from gateway.api.backpressure import DEFAULT_SEND_BUFFER, TOO_SLOW_CLOSE_CODE, BehindWatch, too_slow_reason
from gateway.api.base import (
    JSONErrors,
    authenticate,
    bearer_token,
    check_websocket,
    describe,
    error_body,
    origin_allowed,
)
from gateway.api.forwarding import served_elsewhere
from gateway.api.streams import UncopiedFrames
from gateway.jsonbytes import TooDeep, loads, loads_bounded, pieces
from gateway.auth import KeyRing
from gateway.errors import GatewayError, InvalidJSON, InvalidRequest
from gateway.execution.feed import ExecutionFeed, FeedCursor
from gateway.sandboxes.inputs import check_code
from gateway.sandboxes.manager import RunningExecution, SandboxManager

log = logging.getLogger(__name__)

#: An execute message: an execute request's body with the message's ``type`` and ``id``.
EXECUTE_MESSAGE: dict[str, Any] = {
    **schemas.EXECUTE,
    "required": [*schemas.EXECUTE["required"], "type"],
    "properties": {**schemas.EXECUTE["properties"], "type": {"const": "execute"},
                   "id": {"type": ["string", "integer"]}},
}
SOCKET_MESSAGE = schemas.BodyValidator(
    {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": ["execute", "interrupt"]}, "id": {"type": ["string", "integer"]}},
        "if": {"properties": {"type": {"const": "execute"}}},
        "then": EXECUTE_MESSAGE,
        "else": {"additionalProperties": False, "properties": {"type": {}, "id": {}}},
    },
    quick=EXECUTE_MESSAGE,  # (whatever it accepts, the whole schema accepts: it is the "then" branch)
)


class SandboxSocketHandler(JSONErrors, UncopiedFrames):
    def initialize(self, keyring: KeyRing, sandboxes: SandboxManager, allow_origins: list[str] | None = None,
                   max_send_buffer: int = DEFAULT_SEND_BUFFER, **_: Any) -> None:
        self.keyring = keyring
        self.sandboxes = sandboxes
        self.allow_origins = allow_origins or []
        self.max_send_buffer = max_send_buffer
        self.sandbox_id = ""
        #: Accepted executions whose events are still to be sent, oldest (being sent) first.
        self._accepted: collections.deque[tuple[Any, RunningExecution]] = collections.deque()
        self._more = asyncio.Event()
        self._cursor: FeedCursor | None = None
        #: Executions to cancel if the socket closes before they finish.
        self._to_cancel: list[RunningExecution] = []
        self._writer: asyncio.Task[None] | None = None
        #: Answers to bad or refused messages on their way (``_reply``).
        self._replies: set[asyncio.Future[None]] = set()
        self._sending = asyncio.Lock()
        self._watch = BehindWatch(max_send_buffer, behind=self._behind, overrun=self._too_slow)
        self._cut_off = False

    async def prepare(self) -> None:
        token = bearer_token(self) or self.get_query_argument("token", "")
        self.current_user = await authenticate(self.keyring, token)

    async def get(self, sandbox_id: str) -> None:
        check_websocket(self, self.allow_origins)
        if await served_elsewhere(self, self.sandboxes, sandbox_id):
            return  # (another replica holds it: the socket is joined to one there)
        await self.sandboxes.get(sandbox_id, self.current_user)  # 404 before the upgrade, like any route
        self.sandbox_id = sandbox_id
        await super().get(sandbox_id)

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.request.host, self.allow_origins)

    def open(self, sandbox_id: str) -> None:
        self.set_nodelay(True)  # else each event after the first may wait ~40 ms for a delayed ACK (Nagle)
        self._writer = asyncio.create_task(self._write_events(), name=f"socket-writer-{sandbox_id}")
        self._watch.start()
        self.sandboxes.socket_opened(sandbox_id)  # a connected socket keeps its sandbox from idling

    async def on_message(self, message: str | bytes) -> None:
        if self._cut_off:
            return  # closing: take no more work from it
        try:
            request = _parse(message)
        except GatewayError as error:
            self._reply({"type": "error", "id": message_id(message), **error_body(error.code, error.message)})
            return
        request_id = request.get("id")
        try:
            if request["type"] == "interrupt":
                await self.sandboxes.interrupt(self.sandbox_id, self.current_user)
                return
            code = check_code(request["code"])
            running = await self.sandboxes.submit(self.sandbox_id, self.current_user, code,
                                                  timeout=request.get("timeout"), context=request.get("context"),
                                                  language=request.get("language"))
        except GatewayError as error:
            event = {"type": "error", "id": request_id, **error_body(error.code, error.message)}
            if error.retry_after is not None:
                event["error"]["retry_after"] = error.retry_after
            self._reply(event)
            return
        if request.get("interrupt_on_disconnect", False):
            self._to_cancel = [r for r in self._to_cancel if not r.execution.finished] + [running]
        self._accepted.append((request_id, running))
        self._more.set()

    def _reply(self, event: dict[str, Any]) -> None:
        """Send the answer to a message without waiting for it here: the execution being sent may hold
        the socket's sends (its final event waiting for its record: see ``write_held``), and Tornado
        reads no frame — no pong, no interrupt — while ``on_message`` waits. (Replies keep their order:
        each waits its turn at the same lock.)"""
        reply = asyncio.ensure_future(self._send(event))
        self._replies.add(reply)
        reply.add_done_callback(self._replies.discard)

    async def _write_events(self) -> None:
        """Send each accepted execution's events in turn; awaiting each write is the backpressure."""
        while True:
            await self._more.wait()
            request_id, running = self._accepted[0]
            execution_id = running.execution.id
            await self._send({"type": "accepted", "id": request_id, "execution_id": execution_id})
            self._cursor = running.feed.cursor()
            async for event in self._cursor.follow(early_end=True):
                assert event is not None
                tagged = {**event, "id": request_id, "execution_id": execution_id}
                try:
                    await self._send(tagged, running.feed if self._cursor.took_last else None)
                except GatewayError as never:  # its record never will be stored (the gateway stopped first)
                    log.warning("execution %s: its socket gets no result: %s", execution_id, never)
                    await self._send({"type": "error", "id": request_id, "execution_id": execution_id,
                                      **error_body(never.code, never.message)})
            self._cursor = None
            self._accepted.popleft()
            if not self._accepted:
                self._more.clear()

    def _behind(self) -> int:
        """Bytes of accepted executions' events not sent yet: the rest of the one being sent, all of the others'."""
        waiting = list(self._accepted)
        if self._cursor is not None and waiting:
            return self._cursor.behind + sum(running.feed.held_bytes for _, running in waiting[1:])
        return sum(running.feed.held_bytes for _, running in waiting)

    def _too_slow(self) -> None:
        log.info("sandbox %s: closing a /stream socket that fell over %d bytes behind", self.sandbox_id,
                 self.max_send_buffer)
        self.sandboxes.metrics.slow_clients.labels(kind="stream_socket").inc()
        self._cut_off = True
        if self._writer is not None:
            self._writer.cancel()
        self._accepted.clear()  # what it would have been sent: the executions themselves go on and are stored
        self.close(TOO_SLOW_CLOSE_CODE, too_slow_reason(self.max_send_buffer))

    async def _send(self, event: dict[str, Any], final_of: ExecutionFeed | None = None) -> None:
        """Send one event; ``final_of``: the feed it ends, whole once its execution is durable (see
        ``write_held``). One at a time: a held event's fragments have nothing between them."""
        async with self._sending:
            try:
                if final_of is None:
                    await self.write_pieces(pieces(event))  # bytes, sent as a text frame
                else:
                    await self.write_held(pieces(event), final_of.stored)
            except websocket.WebSocketClosedError:
                pass

    def on_close(self) -> None:
        self._watch.stop()
        for reply in list(self._replies):
            reply.cancel()
        if self._writer is not None:
            self._writer.cancel()
            self.sandboxes.socket_closed(self.sandbox_id)
        for running in self._to_cancel:
            if not running.execution.finished:
                self.sandboxes.cancel_soon(running)


#: ``"id": "..."`` or ``"id": 12`` in a message that is not valid JSON.
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.)*"|-?\d+)')


def message_id(message: str | bytes) -> str | int | None:
    """The client's ``id`` of a message, to tag the answer with, also when the message is bad.

    A string or an integer, as a valid message has; from a message that is not valid JSON, what
    its text unambiguously says (one ``"id": ...``); else None.
    """
    try:
        text = message.decode("utf-8") if isinstance(message, bytes) else message
    except UnicodeDecodeError:
        return None
    try:
        request = loads(text)
    except ValueError:  # (not JSON, or nested too deep to read)
        found = {match.group(1) for match in _ID_IN_TEXT.finditer(text)}
        if len(found) != 1:
            return None
        try:
            value = loads(found.pop())
        except ValueError:
            return None
    else:
        value = request.get("id") if isinstance(request, dict) else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _parse(message: str | bytes) -> dict[str, Any]:
    try:
        request = loads_bounded(message)
    except TooDeep as exc:
        raise InvalidJSON(f"the message is refused: {exc}") from None
    except ValueError as exc:  # bad JSON or bad UTF-8
        raise InvalidJSON(f"the message is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidJSON("a message must be a JSON object")
    problem = next(iter(sorted(SOCKET_MESSAGE.iter_errors(request), key=lambda e: list(e.path))), None)
    if problem is not None:
        raise InvalidRequest(describe(problem))
    return request
