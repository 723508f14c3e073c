"""``GET /api/v1/events``: the event outbox as Server-Sent Events, resumable with ``Last-Event-ID``.

    curl -N localhost:8888/api/v1/events -H "Authorization: Bearer $KEY" -H "Last-Event-ID: 41"
    id: 42
    event: sandbox.paused
    data: {"id": "42", "type": "sandbox.paused", "time": "…", "sandbox_id": "…", "owner": "alice", "data": {…}}

Each user sees the events of their own sandboxes; ``admin`` sees everyone's. Where to start:
``Last-Event-ID`` (what an EventSource sends when it reconnects), else ``?after=N``, else from now
on (``?after=0``: everything still retained). ``?type=`` (repeatable) keeps only those types. A
``: keepalive`` comment goes out after ``keepalive`` seconds of silence.
"""

from __future__ import annotations

import json
from typing import Any

from tornado.iostream import StreamClosedError

from gateway.api.base import MAX_OFFSET, APIHandler
from gateway.errors import InvalidRequest
from gateway.events.log import EventLog
from gateway.events.model import TYPES
from gateway.store.base import Record


def sse(record: Record) -> bytes:
    return f"id: {record['id']}\nevent: {record['type']}\ndata: {json.dumps(record)}\n\n".encode()


class EventsHandler(APIHandler):
    def initialize(self, events: EventLog, admin_user: str, keepalive: float = 15.0,  # type: ignore[override]
                   **base: Any) -> None:
        super().initialize(**base)
        self.events = events
        self.admin_user = admin_user
        self.keepalive = keepalive

    def start(self, text: str, name: str) -> int:
        try:
            after = int(text)
        except ValueError:
            raise InvalidRequest(f"{name} must be an event id (a whole number), got {text[:50]!r}") from None
        if not 0 <= after <= MAX_OFFSET:
            raise InvalidRequest(f"{name} must be 0..{MAX_OFFSET}, got {after}")
        return after

    async def get(self) -> None:
        types = self.get_arguments("type")
        unknown = sorted(set(types) - set(TYPES))
        if unknown:
            raise InvalidRequest(f"unknown event type {unknown[0]!r}; the types are {', '.join(TYPES)}")
        resume = self.request.headers.get("Last-Event-ID")
        if resume is not None:
            after = self.start(resume.strip(), "Last-Event-ID")
        elif self.get_argument("after", None) is not None:
            after = self.start(self.get_argument("after"), "'after'")
        else:
            after = await self.events.store.last_event_id()
        owner = None if self.user == self.admin_user else self.user
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("X-Accel-Buffering", "no")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
        try:
            self.write(": events\n\n")  # the headers go out now: the client knows it is connected
            await self.flush()
            async for record in self.events.follow(after, owner, keepalive=self.keepalive, types=types or None):
                self.write(b": keepalive\n\n" if record is None else sse(record))
                await self.flush()  # awaited: a slow client slows only itself
        except StreamClosedError:
            return
