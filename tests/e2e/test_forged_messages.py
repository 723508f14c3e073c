"""Attacks on the relay from inside a sandbox: forged, foreign, unsigned and garbage kernel messages.

Code in a sandbox can write any bytes onto its own kernel's iopub socket. Only messages signed
with the sandbox's key may reach a client (REST, NDJSON, /stream, and the Jupyter channels
WebSocket in both protocols); the rest is dropped and counted, and a flood of garbage neither
floods the log nor stops the sandbox or the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any

import httpx
import pytest
import websockets
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1, serialize_msg_to_ws_v1

from tests.api.test_sockets import connect as stream_socket
from tests.api.test_streaming import ndjson_events
from tests.gateways import KEYS, InProcessGateway
from tests.provisioned import alice, create, each_gateway, run  # noqa: F401  (fixtures)

#: Sends messages onto the kernel's own iopub socket as if the kernel had, for the running
#: execution: one signed with another key, one unsigned, one signed but with a header that is
#: no object, three kinds of garbage, and one properly signed (which must arrive). The forged
#: text is assembled at run time, so the code itself (echoed as execute_input) never holds it.
FORGE = r'''
import datetime, hashlib, hmac, json, uuid
_k = get_ipython().kernel
_parent = _k.get_parent("shell")["header"]
def _frames(key, text, header=None):
    if header is None:
        header = {"msg_id": uuid.uuid4().hex, "msg_type": "stream", "username": "kernel",
                  "session": _k.session.session, "version": "5.3",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    parts = [json.dumps(p, default=str).encode() for p in (header, _parent, {}, {"name": "stdout", "text": text})]
    signature = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode() if key else b""
    return [b"stream", b"<IDS|MSG>", signature, *parts]
_marker = "FOR" + "GED"
_send = _k.iopub_socket.send_multipart
_send(_frames(b"another-tenants-key", _marker + "-foreign\n"))
_send(_frames(b"", _marker + "-unsigned\n"))
_send(_frames(_k.session.key, _marker + "-bad-header\n", header=[1, 2]))
_send([b"garbage"])
_send([b"<IDS|MSG>", b"x"])
_send([b"<IDS|MSG>", b"", b"\xff\xfe", b"{}", b"{}", b"{}"])
_send(_frames(_k.session.key, "GEN" + "UINE\n"))
'''
FORGED = b"FORGED"
FORGED_COUNT = 6

#: Garbage as fast as the kernel can publish it, from a thread, while other requests are served.
FLOOD = r'''
import threading, time
_k = get_ipython().kernel
def _flood(count):
    for sent in range(count):
        _k.iopub_socket.send_multipart([b"garbage", b"<IDS|MSG>", b"no-signature"])
        if sent % 500 == 0:
            time.sleep(0.001)  # let the kernel's iopub thread keep up
_flooder = threading.Thread(target=_flood, args=(FLOOD_COUNT,), daemon=True)
_flooder.start()
'''
FLOOD_COUNT = 10_000

pytestmark = pytest.mark.timeout(300)


def channels_url(gateway: InProcessGateway, kernel_id: str) -> str:
    return gateway.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"


class ChannelsListener:
    """A Jupyter channels WebSocket (JSON or v1 protocol) recording every iopub frame it receives."""

    def __init__(self, gateway: InProcessGateway, kernel_id: str, protocol: str | None) -> None:
        self.url = channels_url(gateway, kernel_id)
        self.protocol = protocol
        self.raw: list[bytes] = []
        self.streams: list[str] = []

    async def __aenter__(self) -> ChannelsListener:
        self.socket = await websockets.connect(
            self.url, additional_headers={"Authorization": f"token {KEYS['alice']}"}, max_size=None,
            subprotocols=[self.protocol] if self.protocol else None)  # type: ignore[list-item]
        assert self.socket.subprotocol == self.protocol
        await self._relaying()
        return self

    async def _relaying(self) -> None:
        """Return once jupyter_server relays this socket's messages (the client's handshake ends earlier)."""
        request = Session().msg("kernel_info_request", content={})
        request["header"]["date"] = request["header"]["date"].isoformat()
        if self.protocol is None:
            await self.socket.send(json.dumps({**request, "channel": "shell"}))
        else:
            parts = [json.dumps(request[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
            await self.socket.send(serialize_msg_to_ws_v1(parts, "shell"))
        while True:
            frame = await asyncio.wait_for(self.socket.recv(), 60)
            self.raw.append(frame.encode() if isinstance(frame, str) else frame)
            channel, header, parent_header, _ = self._decode(frame)
            if channel == "shell" and isinstance(header, dict) and header.get("msg_type") == "kernel_info_reply" \
                    and parent_header.get("msg_id") == request["header"]["msg_id"]:
                return

    async def __aexit__(self, *exc: Any) -> None:
        await self.socket.close()

    def _decode(self, frame: str | bytes) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
        if self.protocol is None:
            msg = json.loads(frame)
            return msg["channel"], msg["header"], msg["parent_header"], msg["content"]
        assert isinstance(frame, bytes)
        channel, parts = deserialize_msg_from_ws_v1(frame)
        return channel, json.loads(parts[0]), json.loads(parts[1]), json.loads(parts[3])

    async def until_idle_after(self, text: str) -> None:
        """Read until a stream holding ``text`` and then the idle status of the same request arrived."""
        parent = None
        while True:
            frame = await asyncio.wait_for(self.socket.recv(), 60)
            self.raw.append(frame.encode() if isinstance(frame, str) else frame)
            channel, header, parent_header, content = self._decode(frame)
            if channel != "iopub" or not isinstance(header, dict):
                continue  # (a forged header may be anything; the test fails on it later)
            if header["msg_type"] == "stream":
                self.streams.append(content["text"])
                if text in content["text"]:
                    parent = parent_header.get("msg_id")
            elif (header["msg_type"] == "status" and content["execution_state"] == "idle"
                  and parent is not None and parent_header.get("msg_id") == parent):
                return


async def dropped(gateway: InProcessGateway) -> float:
    async with gateway.client(None) as anonymous:
        text = (await anonymous.get("/metrics")).text
    return sum(float(value) for value in
               re.findall(r'^code_gateway_kernel_messages_dropped_total\{reason="\w+"\} (\S+)$', text, re.M))


async def test_only_messages_signed_with_the_sandbox_key_reach_any_client(
    each_gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    sid = (await create(alice))["id"]
    before = await dropped(each_gateway)
    async with ChannelsListener(each_gateway, sid, None) as json_ws, \
            ChannelsListener(each_gateway, sid, "v1.kernel.websocket.jupyter.org") as v1_ws:
        listening = asyncio.gather(json_ws.until_idle_after("GENUINE"), v1_ws.until_idle_after("GENUINE"))
        execution = await run(alice, sid, FORGE)
        assert execution["status"] == "completed", execution
        await listening
    # REST: the execution has the genuine output only.
    assert execution["stdout"] == "GENUINE\n"
    assert FORGED not in json.dumps(execution).encode()
    # Both Jupyter protocols relayed the genuine message and nothing forged.
    for listener in (json_ws, v1_ws):
        assert "GENUINE\n" in listener.streams
        assert not any(FORGED in frame for frame in listener.raw), listener.protocol

    # NDJSON and /stream, each on a fresh run of the same attack.
    events = [event for _, event in await ndjson_events(alice, sid, {"code": FORGE})]
    assert events[-1]["execution"]["stdout"] == "GENUINE\n"
    assert FORGED not in json.dumps(events).encode()
    async with stream_socket(each_gateway, sid) as socket:
        await socket.send(json.dumps({"type": "execute", "id": "f", "code": FORGE}))
        frames = []
        while not frames or json.loads(frames[-1])["type"] != "execution":
            frames.append(await asyncio.wait_for(socket.recv(), 60))
    assert json.loads(frames[-1])["execution"]["stdout"] == "GENUINE\n"
    assert not any(FORGED in frame.encode() for frame in frames)

    # Each forged message was dropped by every reader that saw it: our own (three runs) and the
    # two Jupyter sockets (the first run).
    assert await dropped(each_gateway) - before == FORGED_COUNT * (3 + 2)


async def test_a_garbage_flood_is_dropped_counted_and_logged_once(
    each_gateway: InProcessGateway, alice: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    sid = (await create(alice))["id"]
    other = (await create(alice))["id"]
    caplog.set_level(logging.WARNING)
    async with ChannelsListener(each_gateway, sid, None) as json_ws, \
            ChannelsListener(each_gateway, sid, "v1.kernel.websocket.jupyter.org") as v1_ws:
        assert (await run(alice, sid, f"FLOOD_COUNT = {FLOOD_COUNT}\n" + FLOOD, timeout=300))["status"] == "completed"
        # While the flood runs, the gateway serves other requests and the other sandbox.
        async with each_gateway.client(None) as anonymous:
            assert (await anonymous.get("/health")).status_code == 200
        assert (await run(alice, other, "6 * 7", timeout=300))["result"] == {"text/plain": "42"}
        assert (await run(alice, sid, "_flooder.join()", timeout=300))["status"] == "completed"
        # The flooded sandbox still works, and so do both Jupyter sockets on it.
        listening = asyncio.gather(json_ws.until_idle_after("still here"), v1_ws.until_idle_after("still here"))
        assert (await run(alice, sid, "print('still here'); 1 + 1", timeout=300))["result"] == {"text/plain": "2"}
        await listening

    # Up to three readers (ours and the two sockets) dropped each; a PUB socket also drops what a
    # peer does not take in time.
    assert 0 < await dropped(each_gateway) <= 3 * FLOOD_COUNT
    drop_logs = [r for r in caplog.records if r.name == "gateway.execution.messages"]
    assert 1 <= len(drop_logs) <= 2, [r.getMessage() for r in drop_logs]
    assert sid in drop_logs[0].getMessage()
    assert len(caplog.records) < 20, [r.getMessage()[:200] for r in caplog.records]


#: Large messages signed with the sandbox's own key (as code in it can sign them) whose content
#: is the kernel's bytes as relayed without a copy: one spliced (an object, then keys of the
#: Jupyter message itself), one behind a byte order mark, and one genuine that must arrive whole.
LARGE_PARTS = r'''
import datetime, hashlib, hmac, json, uuid
_k = get_ipython().kernel
_parent = _k.get_parent("shell")["header"]
def _large(content):
    header = {"msg_id": uuid.uuid4().hex, "msg_type": "stream", "username": "kernel",
              "session": _k.session.session, "version": "5.3",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    parts = [json.dumps(p, default=str).encode() for p in (header, _parent, {})] + [content]
    signature = hmac.new(_k.session.key, b"".join(parts), hashlib.sha256).hexdigest().encode()
    _k.iopub_socket.send_multipart([b"stream", b"<IDS|MSG>", signature, *parts])
_text = "x" * (1 << 20)
_marker = "SPL" + "ICED"
_large(json.dumps({"name": "stdout", "text": _marker + _text}).encode()
       + b', "channel": "shell", "header": {"msg_type": "' + _marker.encode() + b'"}, "x": {"a": 1}')
_large(b"\xef\xbb\xbf" + json.dumps({"name": "stdout", "text": "BOM" + _text}).encode())
_large(json.dumps({"name": "stdout", "text": "WHOLE" + _text}).encode())
print("GEN" + "UINE")
'''


async def test_a_large_spliced_part_never_reaches_a_jupyter_client_as_it_is(
    each_gateway: InProcessGateway, alice: httpx.AsyncClient
) -> None:
    """The channels relay writes a large content part as the kernel's own bytes, checked to be one
    JSON object: a part that ends early and splices keys into the message, or one behind a byte
    order mark, is not relayed as it is (dropped); every frame a client gets is one JSON message."""
    sid = (await create(alice))["id"]
    async with ChannelsListener(each_gateway, sid, None) as json_ws:
        listening = json_ws.until_idle_after("GENUINE")
        execution = await run(alice, sid, LARGE_PARTS)
        assert execution["status"] == "completed", execution
        await listening
    assert not any(b"SPLICED" in frame or b"\xef\xbb\xbf" in frame for frame in json_ws.raw)
    for frame in json_ws.raw:
        assert set(json.loads(frame)) == {"header", "msg_id", "msg_type", "parent_header", "metadata", "content",
                                         "buffers", "channel"}
    whole = [text for text in json_ws.streams if text.startswith("WHOLE")]
    assert whole == ["WHOLE" + "x" * (1 << 20)]
