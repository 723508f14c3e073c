"""Lifecycle events over real HTTP: the SSE feed (own events, all for admin, Last-Event-ID resume) and
signed webhooks to a receiver on loopback (retried while it is down, delivered after a gateway restart)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
from tornado import web
from tornado.httpserver import HTTPServer

from tests.gateways import InProcessGateway, create, run
from tests.waiting import until

SECRET = "webhook-secret-1"


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The events in an SSE response's lines: ``{"id", "event", "data"}`` per frame (comments skipped)."""
    frame: dict[str, Any] = {}
    async for line in lines:
        if not line:
            if "data" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            frame[field] = json.loads(value) if field == "data" else value


async def take(client: httpx.AsyncClient, count: int, **params: Any) -> list[dict[str, Any]]:
    """The first ``count`` events of a fresh stream (``params``: query, or headers=...)."""
    headers = params.pop("headers", {})
    found: list[dict[str, Any]] = []
    async with client.stream("GET", "/api/v1/events", params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(60):
            async for frame in sse_events(response.aiter_lines()):
                found.append(frame)
                if len(found) == count:
                    break
    return found


async def test_the_feed_tells_each_user_their_own_lifecycle_in_order(gateway: InProcessGateway,
                                                                    alice: httpx.AsyncClient,
                                                                    bob: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    execution = await run(alice, sid, "x = 1")
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/resume")).status_code == 200
    assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
    await create(bob)

    events = await take(alice, 5, after=0)
    assert [e["event"] for e in events] == ["sandbox.created", "execution.finished", "sandbox.paused",
                                           "sandbox.resumed", "sandbox.terminated"]
    assert [e["id"] for e in events] == [e["data"]["id"] for e in events]
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    for frame in events:
        assert set(frame["data"]) == {"id", "type", "time", "sandbox_id", "owner", "data"}
        assert frame["data"]["sandbox_id"] == sid and frame["data"]["owner"] == "alice"
    finished = events[1]["data"]["data"]
    assert finished == {"execution_id": execution["id"], "status": "completed",
                        "duration_ms": execution["duration_ms"]}
    assert events[2]["data"]["data"]["reason"] is None and events[4]["data"]["data"] == {"reason": "deleted"}

    theirs = await take(bob, 1, after=0)
    assert theirs[0]["data"]["owner"] == "bob"  # none of alice's
    async with gateway.client("admin") as admin:
        everything = await take(admin, 6, after=0)
    assert {e["data"]["owner"] for e in everything} == {"alice", "bob"}
    only = await take(alice, 1, after=0, type="sandbox.paused")
    assert only[0]["event"] == "sandbox.paused"


async def test_a_failed_kernel_is_an_event(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    await alice.post(f"/api/v1/sandboxes/{sid}/execute", json={"code": "import os; os._exit(1)"})
    failed = await take(alice, 1, after=0, type="sandbox.failed")
    assert failed[0]["data"]["sandbox_id"] == sid and failed[0]["data"]["data"] == {"reason": "kernel_died"}


async def test_last_event_id_resumes_where_the_client_left_off(alice: httpx.AsyncClient) -> None:
    sid = (await create(alice))["id"]
    first = await take(alice, 1, after=0)
    assert first[0]["event"] == "sandbox.created"
    for i in range(3):  # while nobody listens
        await run(alice, sid, f"{i}")
    # A new stream without a position starts from now; with Last-Event-ID, right after it.
    resumed = await take(alice, 3, headers={"Last-Event-ID": first[0]["id"]})
    assert [e["event"] for e in resumed] == ["execution.finished"] * 3
    assert int(resumed[0]["id"]) > int(first[0]["id"])
    # Without a position the stream starts from now, and then follows live.
    async with alice.stream("GET", "/api/v1/events") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == ": events"  # connected
        await run(alice, sid, "'now'")
        async with asyncio.timeout(60):
            frame = await anext(sse_events(lines))
        assert frame["event"] == "execution.finished" and int(frame["id"]) > int(resumed[-1]["id"])
    bad = await alice.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"]
    unknown = await alice.get("/api/v1/events", params={"type": "sandbox.exploded"})
    assert unknown.status_code == 400 and "sandbox.exploded" in unknown.json()["error"]["message"]


# -- webhooks ------------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on a loopback port: refuses the first ``refuse`` deliveries with 503, then takes them."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.attempts = 0
        self.taken: list[dict[str, Any]] = []
        self.bad_signatures = 0
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        listener.close()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.server: HTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Hook(web.RequestHandler):
            def post(self) -> None:
                receiver.attempts += 1
                expected = "sha256=" + hmac.new(SECRET.encode(), self.request.body, hashlib.sha256).hexdigest()
                if self.request.headers.get("X-Gateway-Signature") != expected:
                    receiver.bad_signatures += 1
                    self.set_status(401)
                    return
                if receiver.refuse > 0:
                    receiver.refuse -= 1
                    self.set_status(503)
                    return
                receiver.taken.append(json.loads(self.request.body))
                self.set_status(204)

        self.server = HTTPServer(web.Application([("/hook", Hook)]))
        self.server.listen(self.port, "127.0.0.1")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None

    def types(self) -> list[str]:
        return [e["type"] for e in self.taken]


def hooked(tmp_path: Any, receiver: Receiver) -> InProcessGateway:
    return InProcessGateway(tmp_path / "data", f"--webhook-url={receiver.url}", f"--webhook-secret={SECRET}",
                            "--WebhookSender.max_backoff=0.5")


async def test_webhooks_are_signed_retried_and_in_order(tmp_path: Any) -> None:
    receiver = Receiver(refuse=3)
    receiver.start()
    try:
        async with hooked(tmp_path, receiver) as gateway, gateway.client("alice") as alice, \
                gateway.client(None) as anonymous:
            sid = (await create(alice))["id"]
            await run(alice, sid, "1")
            await alice.delete(f"/api/v1/sandboxes/{sid}")
            await until(receiver.types, lambda t: len(t) == 3, what="three events at the receiver")
            assert receiver.types() == ["sandbox.created", "execution.finished", "sandbox.terminated"]
            assert receiver.attempts == 6 and receiver.bad_signatures == 0  # 3 refused, then each once
            assert [int(e["id"]) for e in receiver.taken] == sorted(int(e["id"]) for e in receiver.taken)
            metrics = (await anonymous.get("/metrics")).text
            assert 'code_gateway_webhook_deliveries_total{result="delivered"} 3.0' in metrics
            assert 'code_gateway_webhook_deliveries_total{result="failed"} 3.0' in metrics
    finally:
        await receiver.stop()


async def test_webhooks_wait_for_a_receiver_that_is_down_even_across_a_gateway_restart(tmp_path: Any) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    async with hooked(tmp_path, receiver) as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        await run(alice, sid, "1")
        await until(lambda: gateway.app.metrics.webhook_deliveries.labels(result="failed")._value.get(),
                    lambda failed: failed >= 2, what="failed deliveries to a receiver that is down")
    # (the gateway's shutdown ended the sandbox: one more event, also waiting)
    receiver.start()
    try:
        async with hooked(tmp_path, receiver) as gateway:
            await until(receiver.types, lambda t: len(t) == 3, what="the waiting events, after the restart")
            assert receiver.types() == ["sandbox.created", "execution.finished", "sandbox.terminated"]
            assert {e["sandbox_id"] for e in receiver.taken} == {sid}
            assert receiver.taken[2]["data"] == {"reason": "gateway_shutdown"}
    finally:
        await receiver.stop()
