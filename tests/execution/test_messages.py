"""MessageGate and decode: what a kernel message must be to be read, and how drops are counted and logged.

The attacks themselves, from inside real sandboxes, are in tests/e2e/test_forged_messages.py.
"""

from __future__ import annotations

import json
import logging

import pytest
from jupyter_client.session import Session
from prometheus_client import CollectorRegistry, Counter

from gateway.execution.messages import (
    BAD_SIGNATURE, MALFORMED, OVERSIZED, VERIFIED_FOR, VERIFIED_LARGE, BadMessage, MessageGate, decode,
)
from gateway.provisioners.relay import CUT

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


def test_a_large_message_is_verified_once_for_all_its_copies_and_a_forged_copy_is_refused() -> None:
    """Each Jupyter socket on a kernel gets its own copy of every iopub message: a copy byte for
    byte equal to one the gate verified (same key) is admitted without its HMAC computed again;
    a copy that differs anywhere, or comes after the key changed, is checked as any message is."""
    session = Session(key=KEY)
    now = [1000.0]
    gate = MessageGate("sb-1", session, clock=lambda: now[0])
    text = "x" * VERIFIED_LARGE

    def large(marker: str = "") -> list[bytes]:
        return signed(session, {"msg_id": "m", "msg_type": "stream"}, {"msg_id": "p"},
                      {"name": "stdout", "text": text + marker})

    # No Jupyter socket: nothing is kept, every copy is verified as it comes.
    assert gate.admit("iopub", large()) is not None and gate.admit("iopub", large()) is not None
    assert gate.copies_verified == 0

    gate.copies_more(1)  # (one socket: each message comes twice)
    frames = large("1")
    assert gate.admit("iopub", frames) is not None
    copy = [bytes(frame) for frame in frames]  # (equal, not the same objects)
    message = gate.admit("iopub", copy)
    assert message is not None and message.content["text"] == text + "1" and gate.copies_verified == 1
    # The copies expected came: a third is verified again (and still admitted).
    assert gate.admit("iopub", [bytes(frame) for frame in frames]) is not None and gate.copies_verified == 1

    # A forged copy: the signature of a verified message, one byte of its content changed.
    frames = large("2")
    assert gate.admit("iopub", frames) is not None
    forged = [*frames[:-1], frames[-1].replace(b"2", b"3")]
    assert gate.admit("iopub", forged) is None and gate.drops == 1 and gate.copies_verified == 1
    assert gate.admit("iopub", frames) is not None and gate.copies_verified == 2  # (the genuine copy still is)
    # Other headers, same content and signature.
    frames = large("4")
    assert gate.admit("iopub", frames) is not None
    assert gate.admit("iopub", [frames[0], frames[1], frames[2], frames[3].replace(b"m", b"n"), *frames[4:]]) is None

    # The key changed (a re-attach): a copy of a message signed with the old one is not taken as verified.
    frames = large("5")
    assert gate.admit("iopub", frames) is not None
    gate.session = Session(key=b"the-new-key")
    assert gate.admit("iopub", [bytes(frame) for frame in frames]) is None
    gate.session = session

    # A copy that comes too late (its socket was not subscribed yet, say) is verified again.
    frames = large("6")
    assert gate.admit("iopub", frames) is not None
    now[0] += VERIFIED_FOR + 1
    verified = gate.copies_verified
    assert gate.admit("iopub", [bytes(frame) for frame in frames]) is not None and gate.copies_verified == verified
    # Small messages and other channels are never kept.
    small = signed(session, {"msg_type": "stream"})
    assert gate.admit("iopub", small) is not None and gate.admit("iopub", small) is not None
    assert gate.admit("shell", large("7")) is not None and gate.admit("shell", large("7")) is not None
    assert gate.copies_verified == verified


def test_a_copy_read_as_a_view_of_its_frame_is_compared_as_bytes() -> None:
    """The channels relay reads a large part as a memoryview (uncopied): a copy compared with the
    verified message by its bytes, a forged one refused."""
    session = Session(key=KEY)
    gate = MessageGate("sb-1", session)
    gate.copies_more(1)
    frames = signed(session, {"msg_id": "m", "msg_type": "stream"}, content={"text": "x" * VERIFIED_LARGE})
    viewed = [*frames[:-1], memoryview(bytearray(frames[-1]))]
    assert gate.admit("iopub", viewed) is not None  # (the view first: it is what is kept)
    assert gate.admit("iopub", [bytes(frame) for frame in frames]) is not None and gate.copies_verified == 1
    assert gate.admit("iopub", viewed) is not None
    forged = bytearray(frames[-1])
    forged[-3] ^= 1
    assert gate.admit("iopub", [*frames[:-1], memoryview(forged)]) is None


def test_a_message_the_relay_cut_is_dropped_and_says_whose_output_was_lost() -> None:
    """Even where what is left of it is well signed: the buffers a signature does not cover were cut."""
    session = Session(key=KEY)
    counter = Counter("dropped", "test", ["reason"], registry=CollectorRegistry())
    gate = MessageGate("sb", session, dropped=counter)
    whole = signed(session, {"msg_id": "m", "msg_type": "display_data"}, {"msg_id": "the-request"})
    lost: list[str] = []
    cut_early = [b"topic", b"<IDS|MSG>", whole[2], CUT]  # cut before the parent header
    for frames, parent in ((whole + [b"buffer", CUT], "the-request"), (whole[:5] + [CUT], "the-request"),
                           (cut_early, ""), ([CUT], "")):
        assert gate.admit("iopub", frames, lost.append) is None
        assert lost.pop() == parent
        with pytest.raises(BadMessage) as bad:
            decode(session, frames)
        assert bad.value.reason == OVERSIZED
    assert counter.labels(reason=OVERSIZED)._value.get() == 4
    # A message merely holding the marker elsewhere is read as any other.
    assert gate.admit("iopub", whole + [CUT, b"last"], lost.append) is not None and not lost
