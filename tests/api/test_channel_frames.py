"""What a client may send on a Jupyter channels socket (gateway.api.channel_frames): a frame that is
no message of the socket's protocol closes it with 1007 and a reason, over a real WebSocket to a real
gateway and kernel; whole messages of both protocols, buffers included, still reach the kernel."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
import websockets
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

from gateway.api.channel_frames import MAX_REASON, V1_PROTOCOL, BadFrame, check_frame
from tests.api.test_jupyter import TOKEN, channels_url, execute_request, kernel, replies_to
from tests.gateways import InProcessGateway

__all__ = ["kernel"]  # (the fixture, from test_jupyter)


def message(**changes: Any) -> dict[str, Any]:
    """An execute_request of the JSON protocol, with ``changes`` (a value of None: that key left out)."""
    request = execute_request("6 * 7")
    request.update(changes)
    return {key: value for key, value in request.items() if value is not None}


def binary(parts: list[bytes]) -> bytes:
    """The JSON protocol's binary frame (as JupyterLab's ``serializeBinary`` makes it): the message's
    JSON, then buffers."""
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!i{len(parts)}I", len(parts), *offsets) + b"".join(parts)


def v1(request: dict[str, Any], channel: str = "shell", buffers: tuple[bytes, ...] = (), **raw: bytes) -> bytes:
    """A ``v1.kernel.websocket.jupyter.org`` frame of ``request`` and ``buffers``, its parts replaced by ``raw``
    bytes where given."""
    parts = [raw.get(key, json.dumps(request[key]).encode())
             for key in ("header", "parent_header", "metadata", "content")]
    return serialize_msg_to_ws_v1([*parts, *buffers], channel)


def v1_table(count: int, offsets: list[int], rest: bytes = b"") -> bytes:
    return count.to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets) + rest


GOOD = v1(execute_request("1"))
JSON_PROTOCOL_BAD = [
    ("not json", "the message is not JSON"),
    ("[1, 2]", "a message must be a JSON object"),
    ("[" * 100_000, "nested more than 128 levels deep"),
    (json.dumps({**message(), "channel": None}), "unknown channel 'None'"),
    (json.dumps(message(channel="bogus")), "unknown channel 'bogus'"),
    (json.dumps(message(channel="iopub")), "iopub carries the kernel's messages only"),
    (json.dumps(message(channel=5)), "unknown channel '5'"),
    (json.dumps(message(header=None)), "header must be a JSON object"),
    (json.dumps(message(header="h")), "header must be a JSON object"),
    (json.dumps(message(header={"msg_id": "m"})), "header has no msg_type"),
    (json.dumps(message(header={"msg_id": "m", "msg_type": ""})), "header has no msg_type"),
    (json.dumps(message(header={"msg_type": "execute_request"})), "header has no msg_id"),
    (json.dumps(message(parent_header=None)), "parent_header must be a JSON object"),
    (json.dumps(message(metadata=[])), "metadata must be a JSON object"),
    (json.dumps(message(content="6 * 7")), "content must be a JSON object"),
    (json.dumps(message(buffers=["AAAA"])), "buffers come in a binary frame"),
    (b"\x00\x00", "binary frame: 2 bytes, too short"),
    (struct.pack("!i", 0) + b"{}", "count of offsets (0) does not fit"),
    (struct.pack("!i", -1) + b"{}", "count of offsets (-1) does not fit"),
    (struct.pack("!iI", 1000, 8), "count of offsets (1000) does not fit 8 bytes"),
    (struct.pack("!iI", 1, 4) + b"{}", "first offset (4) is not the end of its offsets (8)"),
    (struct.pack("!iII", 2, 12, 9) + b"{}xx", "offsets go back or past its end"),
    (struct.pack("!iII", 2, 12, 99) + b"{}xx", "offsets go back or past its end"),
    (binary([b"not json"]), "the message's JSON part is not JSON"),
    (binary([json.dumps(message(channel="nope")).encode(), b"buffer"]), "unknown channel 'nope'"),
]
V1_BAD = [
    ("a text frame", "a text frame on a v1.kernel.websocket.jupyter.org socket"),
    (b"\x01\x02", "v1 frame: 2 bytes, too short"),
    (v1_table(5, [48, 48, 48, 48, 48]), "count of offsets (5) does not fit 48 bytes (at least 6)"),
    (v1_table(1 << 40, [16]), "does not fit"),
    (v1_table(6, [56]), "count of offsets (6) does not fit 16 bytes"),
    (v1_table(6, [40, 45, 47, 49, 51, 53], b"shell" + b"{}" * 4),
     "first offset (40) is not the end of its offsets (56)"),
    (v1_table(6, [56, 61, 59, 63, 65, 69], b"shell" + b"{}" * 4), "offsets go back or past its end"),
    (GOOD + b"trailing", f"its last offset ({len(GOOD)}) is not its end ({len(GOOD) + 8} bytes)"),
    (v1(execute_request("1"), channel="iopub"), "iopub carries the kernel's messages only"),
    (v1(execute_request("1"), channel="bogus"), "unknown channel 'bogus'"),
    (v1_table(6, [56, 57, 59, 61, 63, 65], b"\xff{}{}{}{}"), "its channel is not UTF-8"),
    (v1(execute_request("1"), header=b"not json"), "the header is not JSON"),
    (v1(execute_request("1"), header=b'{"msg_id": "m"}'), "header has no msg_type"),
    (v1(execute_request("1"), header=b'["execute_request"]'), "header must be a JSON object"),
    (v1(execute_request("1"), parent_header=b"[]"), "its parent_header is not one JSON object"),
    (v1(execute_request("1"), metadata=b"{} {}"), "its metadata is not one JSON object"),
    (v1(execute_request("1"), content=b'{"code": NaN}'), "its content is not one JSON object"),
]


@pytest.mark.parametrize("frame, reason", JSON_PROTOCOL_BAD)
def test_frames_of_the_json_protocol_that_are_no_message(frame: str | bytes, reason: str) -> None:
    with pytest.raises(BadFrame) as bad:
        check_frame(frame, None)
    assert reason in bad.value.reason and len(bad.value.reason.encode()) <= MAX_REASON


@pytest.mark.parametrize("frame, reason", V1_BAD)
def test_frames_of_v1_that_are_no_message(frame: str | bytes, reason: str) -> None:
    with pytest.raises(BadFrame) as bad:
        check_frame(frame, V1_PROTOCOL)
    assert reason in bad.value.reason and len(bad.value.reason.encode()) <= MAX_REASON


def test_whole_messages_pass() -> None:
    request = execute_request("1")
    check_frame(json.dumps(request), None)
    check_frame(json.dumps(message(content=None, buffers=[])), None)  # (no content: jupyter_server sends {})
    check_frame(json.dumps(message(channel=None)), None)  # (no channel: shell, as jupyter_server's own client sends)
    for channel in ("shell", "control", "stdin"):
        check_frame(json.dumps({**request, "channel": channel}), None)
        check_frame(v1(request, channel), V1_PROTOCOL)
    check_frame(binary([json.dumps(request).encode()]), None)
    check_frame(binary([json.dumps(request).encode(), b"\x00\x01", b""]), None)
    check_frame(v1(request, buffers=(b"\xff\x00raw", b"")), V1_PROTOCOL)


def test_a_long_reason_is_cut_to_fit_a_close_frame() -> None:
    with pytest.raises(BadFrame) as bad:
        check_frame(json.dumps(message(channel="é" * 500)), None)
    assert len(bad.value.reason.encode()) <= MAX_REASON and bad.value.reason.startswith("unknown channel 'éé")


async def closed_with(socket: Any, within: float = 30) -> websockets.frames.Close:
    """The Close frame the gateway sent (messages before it, the kernel's status broadcasts, skipped)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await socket.recv()
    assert closed.value.rcvd is not None, "the connection was dropped without a Close frame"
    return closed.value.rcvd


@pytest.mark.parametrize("subprotocol, cases", [(None, JSON_PROTOCOL_BAD), (V1_PROTOCOL, V1_BAD)])
async def test_a_bad_frame_closes_the_socket_with_1007_and_its_reason(gateway: InProcessGateway, kernel: dict[str, Any],
                                                                      subprotocol: str | None,
                                                                      cases: list[tuple[str | bytes, str]]) -> None:
    for frame, reason in cases:
        async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN,
                                      subprotocols=[subprotocol] if subprotocol else None) as socket:
            assert socket.subprotocol == subprotocol
            await socket.send(frame)
            close = await closed_with(socket)
            assert (close.code, reason in close.reason) == (1007, True), (frame[:80], close)
    # The kernel is none the worse: a whole message on a new socket is answered.
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        request = execute_request("6 * 7")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]


async def test_nothing_sent_after_a_bad_frame_reaches_the_kernel(gateway: InProcessGateway,
                                                                 kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        await socket.send("not json")
        await socket.send(json.dumps(execute_request("ran_after_the_bad_frame = True")))
        close = await closed_with(socket)
    assert close.code == 1007
    async with gateway.client(None) as client:
        response = await client.post(f"/api/v1/sandboxes/{kernel['id']}/execute", headers=TOKEN,
                                     json={"code": "'ran_after_the_bad_frame' in globals()"})
    assert response.json()["result"] == {"text/plain": "False"}


async def test_binary_frames_with_buffers_and_messages_naming_no_channel_reach_the_kernel(gateway: InProcessGateway,
                                                                 kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        request = execute_request("7 * 6")
        await socket.send(binary([json.dumps(request).encode(), b"\x00\xffa buffer"]))
        got = await replies_to(socket, request["header"]["msg_id"])
        # And a message that names no channel goes to shell, as jupyter_server's GatewayKernelClient expects.
        unnamed = message(channel=None)
        await socket.send(json.dumps(unnamed))
        got += await replies_to(socket, unnamed["header"]["msg_id"])
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42", "42"]
