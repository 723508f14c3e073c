"""The Jupyter channels relay's fast path: a kernel message read off ZMQ with its large parts
uncopied, checked by the sandbox's gate, and written as the JSON jupyter_server's protocol sends.

Real ZMQ sockets and real Jupyter signing; what reaches a real client from a real sandbox is in
tests/api/test_jupyter.py and tests/e2e/test_forged_messages.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import orjson
import pytest
import zmq
from jupyter_client.session import Session

from gateway.api.channels import jupyter_json, receive_uncopied
from gateway.execution.messages import MessageGate
from gateway.jsonbytes import LARGE


def kernel_message(session: Session, content: bytes, metadata: bytes = b"{}") -> list[bytes]:
    header = json.dumps({"msg_id": "m1", "msg_type": "display_data", "date": "2026-12-01T00:00:00Z"}).encode()
    parts = [header, b'{"msg_id": "p1"}', metadata, content]
    return [b"kernel.abc.display_data", b"<IDS|MSG>", session.sign(parts), *parts]


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context = zmq.Context.instance()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender.connect(f"tcp://127.0.0.1:{port}")
    yield sender, receiver
    sender.close(0)
    receiver.close(0)


def test_large_parts_arrive_uncopied_pass_the_gate_and_are_relayed_as_the_kernel_wrote_them(
        sockets: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    sender, receiver = sockets
    session = Session(key=b"the-sandbox-key")
    gate = MessageGate("sb-1", session)
    large = json.dumps({"data": {"text/html": "<tr>\n" * LARGE, "text/plain": "table"}, "metadata": {},
                        "transient": {}}, ensure_ascii=False).encode()
    for metadata, content in ((b"{}", b'{"name": "stdout", "text": "hi"}'), (b"{}", large),
                              (json.dumps({"big": "y" * LARGE}).encode(), large)):
        frames = kernel_message(session, content, metadata)
        sender.send_multipart(frames)
        assert receiver.poll(10_000)
        received = receive_uncopied(receiver)
        assert [bytes(frame) for frame in received] == frames
        # Identities to parent header are bytes; a large metadata or content a view of ZMQ's frame.
        assert all(type(frame) is bytes for frame in received[:5])
        assert [type(frame) for frame in received[5:]] == [memoryview if len(f) >= LARGE else bytes
                                                          for f in frames[5:]]
        message = gate.admit("iopub", received)
        assert message is not None
        pieces = jupyter_json(message, "iopub")
        assert pieces is not None
        # The same bytes as orjson.dumps with the kernel's parts as fragments (what this relay sent before).
        assert b"".join(pieces) == orjson.dumps({
            "header": json.loads(frames[3]), "msg_id": "m1", "msg_type": "display_data",
            "parent_header": {"msg_id": "p1"}, "metadata": orjson.Fragment(metadata),
            "content": orjson.Fragment(content), "buffers": [], "channel": "iopub",
        })
        if len(content) >= LARGE:
            assert any(piece is received[6] for piece in pieces)  # (the view itself: never copied)

    # A part that is not one JSON object is never relayed as it is (the slow way, or dropped).
    for spliced in (large + b', "channel": "shell"', large[:-1], b"\xef\xbb\xbf" + large, b"[" + large + b"]"):
        sender.send_multipart(kernel_message(session, spliced))
        assert receiver.poll(10_000)
        message = gate.admit("iopub", receive_uncopied(receiver))
        assert message is not None and jupyter_json(message, "iopub") is None
    # A forged large part (signed for other bytes) does not pass the gate.
    frames = kernel_message(session, large)
    sender.send_multipart([*frames[:-1], frames[-1].replace(b"<tr>", b"<td>", 1)])
    assert receiver.poll(10_000)
    assert gate.admit("iopub", receive_uncopied(receiver)) is None
