"""MessageGate and decode: what a kernel message must be to be read, and how drops are counted and logged.

The attacks themselves, from inside real sandboxes, are in tests/e2e/test_forged_messages.py.
"""

from __future__ import annotations

import json
import logging

import pytest
from jupyter_client.session import Session
from prometheus_client import CollectorRegistry, Counter

from gateway.execution.messages import BAD_SIGNATURE, MALFORMED, BadMessage, MessageGate, decode

KEY = b"the-sandbox-key"


def signed(session: Session, header: object, parent: object = None, content: object = None) -> list[bytes]:
    parts = [json.dumps(p).encode() for p in (header, parent if parent is not None else {}, {},
                                               content if content is not None else {})]
    return [b"topic", b"<IDS|MSG>", session.sign(parts), *parts]


def test_decode_reads_a_signed_message_and_refuses_the_rest() -> None:
    session = Session(key=KEY)
    message = decode(session, signed(session, {"msg_id": "m", "msg_type": "stream"}, {"msg_id": "p"},
                                     {"name": "stdout", "text": "hi"}))
    assert (message.msg_type, message.parent_id, message.content["text"]) == ("stream", "p", "hi")

    cases = {
        MALFORMED: [[b"no delimiter"], [b"<IDS|MSG>", b"sig", b"{}"],
                    signed(session, [1, 2]), signed(session, "text"), signed(session, {"msg_type": 3}),
                    signed(session, {"msg_type": "stream"}, {"msg_id": ["not", "a", "string"]}),
                    # signed, but a part is not UTF-8
                    [b"<IDS|MSG>", session.sign([b"\xff", b"{}", b"{}", b"{}"]), b"\xff", b"{}", b"{}", b"{}"]],
        BAD_SIGNATURE: [signed(Session(key=b"another-key"), {"msg_type": "stream"}),
                        [b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"]],
    }
    for reason, frames_list in cases.items():
        for frames in frames_list:
            with pytest.raises(BadMessage) as bad:
                decode(session, frames)
            assert bad.value.reason == reason, frames
    with pytest.raises(BadMessage) as unkeyed:
        decode(Session(key=b""), signed(Session(key=b""), {"msg_type": "stream"}))
    assert unkeyed.value.reason == BAD_SIGNATURE
    # Content that is no object is refused when it is read.
    odd = decode(session, signed(session, {"msg_type": "stream"}, content=[1]))
    with pytest.raises(BadMessage):
        odd.content


def test_gate_counts_every_drop_and_logs_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    session = Session(key=KEY)
    now = [1000.0]
    counter = Counter("dropped", "test", ["reason"], registry=CollectorRegistry())
    gate = MessageGate("sb-1", session, dropped=counter, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="gateway.execution.messages")

    assert gate.admit("iopub", signed(session, {"msg_type": "status"})) is not None
    for _ in range(1000):
        assert gate.admit("iopub", [b"garbage"]) is None
    assert gate.admit("shell", signed(Session(key=b"other"), {"msg_type": "stream"})) is None
    assert len(caplog.records) == 1
    assert "sb-1" in caplog.records[0].getMessage() and "1 malformed" in caplog.records[0].getMessage()

    now[0] += 59
    gate.admit("iopub", [b"garbage"])
    assert len(caplog.records) == 1
    now[0] += 2
    gate.admit("iopub", [b"garbage"])
    assert len(caplog.records) == 2
    # The second report sums up everything since the first.
    assert "1 bad_signature, 1001 malformed" in caplog.records[1].getMessage()
    assert gate.drops == 1003
    assert counter.labels(reason=MALFORMED)._value.get() == 1002
    assert counter.labels(reason=BAD_SIGNATURE)._value.get() == 1
