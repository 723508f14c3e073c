"""envd's Connect RPC (``gateway/api/e2b/rpc.py``): a request body the codec cannot decode is the
client's error, Connect's ``invalid_argument`` with a message naming the problem (HTTP 400 for a
unary call, the end of the stream for a streaming one), never ``unknown``/500 nor a gateway error
in its log; a body that does not decompress too. Over real HTTP in both codecs and framings, and
through the real SDK, whose ``InvalidArgumentException`` it then is.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import InvalidArgumentException
from e2b.envd.client_shared import ENVD_JSON_CODEC
from e2b_code_interpreter import Sandbox

from tests.api.e2b.conftest import envd_headers
from tests.gateways import GatewayProcess

pytestmark = pytest.mark.docker

LIST_DIR = "filesystem.Filesystem/ListDir"
START = "process.Process/Start"
#: End-of-stream flag of a Connect envelope.
END_STREAM = 0x02


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600)
    yield created
    created.kill()


def call(sandbox: Sandbox, method: str, content_type: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{sandbox.envd_api_url}/{method}", content=body, timeout=60,
                      headers={**envd_headers(sandbox), "Content-Type": content_type,
                               "Connect-Protocol-Version": "1", **headers})


def envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def stream_end(response: httpx.Response) -> dict[str, Any]:
    """The end-of-stream message of a streamed answer (the last envelope, flagged)."""
    data, position, last = response.content, 0, (0, b"")
    while position < len(data):
        flags, size = struct.unpack(">BI", data[position:position + 5])
        last = (flags, data[position + 5:position + 5 + size])
        position += 5 + size
    assert last[0] & END_STREAM, data
    end: dict[str, Any] = json.loads(last[1])
    return end


#: Unary bodies that are not a ListDirRequest, and what the answer's message says of each.
UNDECODABLE = [
    ("application/json", b"{not json", "ListDirRequest in json"),
    ("application/json", b'{"path": 5}', "expected string"),
    ("application/json", b'{"depth": "deep"}', "invalid integer"),
    ("application/json", b"[]", "ListDirRequest"),
    ("application/json", b'{"path": "\xff"}', "ListDirRequest in json"),
    ("application/json", b"", "ListDirRequest in json"),
    ("application/proto", b"\xff\xff\xff", "invalid varint"),
    ("application/proto", b"\x0a\x05ab", "end of buffer"),
]


@pytest.mark.parametrize(("content_type", "body", "says"), UNDECODABLE)
def test_an_undecodable_unary_request_is_invalid_argument(
        sandbox: Sandbox, e2b_gateway: GatewayProcess, content_type: str, body: bytes, says: str) -> None:
    logged = len(e2b_gateway.output)
    response = call(sandbox, LIST_DIR, content_type, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_argument", error
    assert "the request body is not a valid ListDirRequest" in error["message"] and says in error["message"], error
    # A valid request is answered as always, and the gateway logged no failure of its own.
    fine = call(sandbox, LIST_DIR, "application/json", b'{"path": "/home/user"}')
    assert fine.status_code == 200 and isinstance(fine.json().get("entries", []), list), fine.text
    log = "".join(e2b_gateway.output[logged:])
    assert "uncaught exception" not in log and "envd service failed" not in log, log


@pytest.mark.parametrize(("content_type", "message", "says"), [
    ("application/connect+json", b'{"process": {"cmd": 3}}', "expected string"),
    ("application/connect+json", b"{not json", "StartRequest in json"),
    ("application/connect+proto", b"\x0a\x05ab", "end of buffer"),
])
def test_an_undecodable_streamed_request_ends_the_stream_with_invalid_argument(
        sandbox: Sandbox, e2b_gateway: GatewayProcess, content_type: str, message: bytes, says: str) -> None:
    logged = len(e2b_gateway.output)
    response = call(sandbox, START, content_type, envelope(message))
    assert response.status_code == 200, response.text  # (Connect streams answer errors at their end)
    error = stream_end(response)["error"]
    assert error["code"] == "invalid_argument", error
    assert "the request body is not a valid StartRequest" in error["message"] and says in error["message"], error
    log = "".join(e2b_gateway.output[logged:])
    assert "uncaught exception" not in log and "envd service failed" not in log, log


def test_a_body_that_does_not_decompress_is_invalid_argument(sandbox: Sandbox, e2b_gateway: GatewayProcess) -> None:
    logged = len(e2b_gateway.output)
    unary = call(sandbox, LIST_DIR, "application/json", b"not gzip", **{"Content-Encoding": "gzip"})
    assert unary.status_code == 400, unary.text
    assert unary.json()["code"] == "invalid_argument" and "not valid gzip" in unary.json()["message"], unary.text
    streamed = call(sandbox, START, "application/connect+json", envelope(b"not gzip", flags=1),
                    **{"Connect-Content-Encoding": "gzip"})
    error = stream_end(streamed)["error"]
    assert error["code"] == "invalid_argument" and "not valid gzip" in error["message"], error
    # Compressed and valid, it is read as always.
    fine = call(sandbox, LIST_DIR, "application/json", gzip.compress(b'{"path": "/home/user"}'),
                **{"Content-Encoding": "gzip"})
    assert fine.status_code == 200, fine.text
    log = "".join(e2b_gateway.output[logged:])
    assert "uncaught exception" not in log and "envd service failed" not in log, log


class WrongTypes:
    """The SDK's own JSON codec, except that every field of a request goes as a number: what a
    client holding another version of the schema would send."""

    def name(self) -> str:
        return ENVD_JSON_CODEC.name()

    def encode(self, message: Any) -> bytes:
        fields = json.loads(ENVD_JSON_CODEC.encode(message))
        return json.dumps({field: 5 for field in fields}).encode()

    def decode(self, data: bytes, message_class: type[Any]) -> Any:
        return ENVD_JSON_CODEC.decode(data, message_class)


def test_the_sdk_raises_invalid_argument(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real SDK's files (a unary call) and commands (a streamed one): InvalidArgumentException
    with the gateway's message, not the SandboxException of an unknown error."""
    monkeypatch.setattr(sandbox.files._rpc, "_codec", WrongTypes())
    monkeypatch.setattr(sandbox.commands._rpc, "_codec", WrongTypes())
    with pytest.raises(InvalidArgumentException, match="not a valid ListDirRequest in json encoding"):
        sandbox.files.list("/home/user")
    with pytest.raises(InvalidArgumentException, match="not a valid StartRequest in json encoding"):
        sandbox.commands.run("echo hi")
    monkeypatch.undo()
    assert sandbox.commands.run("echo hi").stdout == "hi\n"
