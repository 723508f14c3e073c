"""WebhookSender: every event POSTed to each ``--webhook-url``, signed, in order, until the receiver takes it.

    code-gateway --webhook-url=https://hooks.example/gw --webhook-secret=s3cret

Each event goes out as its JSON (``{"id", "type", "time", "sandbox_id", "owner", "data"}``) with
``X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`` (also
``X-Gateway-Event``, ``X-Gateway-Event-Id``). A receiver verifies the signature over the raw
body, and takes the event by answering 2xx; anything else (an error status, a timeout, a refused
connection) is retried with backoff (1 s doubling to ``max_backoff``) until it does.

Delivery is at least once and in order: one sender per URL reads the store's outbox after its
cursor, and the cursor (in the store) moves past an event only once the receiver took it. So a
restart, or a receiver down for hours, loses nothing within the outbox's retention — the sender
carries on from its cursor. An event taken just before a crash may be sent again: receivers
deduplicate by ``id``. A URL seen for the first time starts with the events written from then on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable

from gateway import __version__
from gateway.events.log import EventLog
from gateway.metrics import GatewayMetrics
from gateway.store.base import Record, Store
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Gateway-Signature"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Gateway-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


class WebhookSender(LoggingConfigurable):
    urls = List(Unicode(), help="URLs every event is POSTed to (repeat the option for several).").tag(config=True)
    secret = Unicode("", help="Key of the HMAC-SHA256 signature in X-Gateway-Signature (empty: unsigned).").tag(
        config=True
    )
    timeout = Float(10.0, help="Seconds a receiver has to answer one event.").tag(config=True)
    max_backoff = Float(300.0, help="Longest wait (s) between two attempts to deliver an event.").tag(config=True)

    def __init__(self, *, store: Store, events: EventLog, metrics: GatewayMetrics,
                 leader: Callable[[], Awaitable[bool]] | None = None, leader_interval: float = 2.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.events = events
        self.metrics = metrics
        #: Among replicas sharing the store, whether this one is the one delivering (asked at most
        #: every ``leader_interval`` s): the others stand by, and one takes over when it dies.
        self.leader = leader
        self.leader_interval = leader_interval
        self._tasks: list[asyncio.Task[None]] = []
        #: Per URL: the last event taken (for /health).
        self.delivered: dict[str, int] = {}

    async def start(self) -> None:
        if self.urls and not self.secret:
            log.warning("webhooks are sent unsigned: set --webhook-secret so receivers can check them")
        for url in dict.fromkeys(self.urls):
            cursor = await self.store.webhook_cursor(url)
            if cursor is None:  # a new receiver starts with what happens from now on
                cursor = await self.store.last_event_id()
                await self.store.set_webhook_cursor(url, cursor)
            self.delivered[url] = cursor
            self._tasks.append(asyncio.create_task(self._deliver(url, cursor), name=f"webhook-{len(self._tasks)}"))

    async def stop(self) -> None:
        await stop_tasks(self._tasks, within=10.0, what="webhooks")
        self._tasks = []

    def describe(self) -> dict[str, Any]:
        return {"urls": len(self.urls), "delivered_up_to": dict(self.delivered)}

    async def _deliver(self, url: str, cursor: int) -> None:
        while True:
            if not await self._leading():
                await asyncio.sleep(self.leader_interval)
                continue
            # (where the replica that delivered last stopped; an event it sent without moving the
            # cursor comes again: delivery is at least once)
            cursor = await self.store.webhook_cursor(url) or cursor
            checked = time.monotonic()
            async for record in self.events.follow(after=cursor, owner=None):
                assert record is not None
                if time.monotonic() - checked >= self.leader_interval:
                    if not await self._leading():
                        break  # another replica delivers from here on
                    checked = time.monotonic()
                await self._send_until_taken(url, record)
                self.delivered[url] = cursor = int(record["id"])
                await self.store.set_webhook_cursor(url, cursor)

    async def _leading(self) -> bool:
        if self.leader is None:
            return True
        try:
            return await self.leader()
        except Exception:  # (a store outage: whoever leads keeps its claim; try again later)
            log.warning("webhook: could not learn which replica delivers", exc_info=True)
            return False

    async def _send_until_taken(self, url: str, record: Record) -> None:
        body = body_of(record)
        headers = {"Content-Type": "application/json", "User-Agent": f"code-gateway/{__version__}",
                   "X-Gateway-Event": str(record["type"]), "X-Gateway-Event-Id": str(record["id"])}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        backoff = 1.0
        while True:
            problem = await self._post(url, body, headers)
            if problem is None:
                self.metrics.webhook_deliveries.labels(result="delivered").inc()
                return
            self.metrics.webhook_deliveries.labels(result="failed").inc()
            log.warning("webhook: event %s not taken (%s); again in %g s", record["id"], problem, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None if the receiver took the event, else what went wrong."""
        request = HTTPRequest(url, method="POST", body=body, headers=headers, request_timeout=self.timeout,
                              connect_timeout=self.timeout, follow_redirects=False)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as exc:  # connection refused, DNS, TLS, timeout
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.code < 300:
            return None
        return f"HTTP {response.code}"
