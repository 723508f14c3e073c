"""Replies: a kernel request's messages in order, output past the byte bound dropped, a display's latest update kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.execution.messages import TOO_DEEP, BadMessage, Message
from gateway.execution.replies import Replies


def message(msg_type: str, **content: Any) -> Message:
    header = {"msg_type": msg_type, "msg_id": "m"}
    parent = {"msg_id": "p"}
    parts = [b"sig", json.dumps(header).encode(), json.dumps(parent).encode(), b"{}", json.dumps(content).encode()]
    return Message(parts, header, parent)


def size_of(msg: Message) -> int:
    return sum(len(part) for part in msg.parts)


async def drain(replies: Replies, count: int) -> list[tuple[str, Any]]:
    return [await replies.get() for _ in range(count)]


async def test_output_past_the_bound_is_dropped_and_said_once_but_status_and_replies_pass() -> None:
    chunk = message("stream", name="stdout", text="x" * 1000)
    counted: list[None] = []
    replies = Replies(max_bytes=3 * size_of(chunk), on_drop=lambda: counted.append(None))
    for _ in range(10):
        replies.offer("iopub", chunk)
    replies.offer("iopub", message("status", execution_state="idle"))
    replies.offer("shell", message("execute_reply", status="ok"))
    got = await drain(replies, 3 + 1 + 2)
    assert [c for c, _ in got] == ["iopub", "iopub", "iopub", "dropped", "iopub", "shell"]
    assert replies.dropped == 7 == len(counted) and replies.pending_bytes == 0
    # Room again: output is taken again, and a new run of drops is said again.
    for _ in range(4):
        replies.offer("iopub", chunk)
    assert [c for c, _ in await drain(replies, 4)] == ["iopub", "iopub", "iopub", "dropped"]


async def test_a_display_update_past_the_bound_replaces_the_one_waiting() -> None:
    first = message("update_display_data", data={"text/plain": "0" * 1000}, transient={"display_id": "d"})
    replies = Replies(max_bytes=size_of(first) + 10)
    replies.offer("iopub", first)
    for n in range(1, 50):
        replies.offer("iopub", message("update_display_data", data={"text/plain": str(n % 10) * 1000},
                                       transient={"display_id": "d"}))
    replies.offer("iopub", message("status", execution_state="idle"))
    (channel, latest), (_, status) = await drain(replies, 2)
    assert latest["content"]["data"]["text/plain"] == "9" * 1000 and status["msg_type"] == "status"
    assert replies.dropped == 0 and replies.pending_bytes == 0


async def test_without_a_bound_nothing_is_dropped() -> None:
    replies = Replies()
    for _ in range(100):
        replies.offer("iopub", message("stream", name="stdout", text="x" * 1000))
    assert len(await drain(replies, 100)) == 100 and replies.dropped == 0


async def test_an_output_too_deep_to_be_read_is_queued_as_nested_and_anything_else_raises() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    header = {"msg_type": "display_data", "msg_id": "m"}
    parts = [b"sig", json.dumps(header).encode(), b'{"msg_id": "p"}', b"{}", b'{"data": ' + deep + b"}"]
    replies = Replies(max_bytes=1 << 20)
    replies.offer("iopub", Message(parts, header, {"msg_id": "p"}))
    replies.offer("iopub", message("status", execution_state="idle"))
    assert [(c, m if c == "nested" else m["content"]) for c, m in await drain(replies, 2)] == [
        ("nested", "display_data"), ("iopub", {"execution_state": "idle"})]
    assert replies.pending_bytes == 0
    status = {"msg_type": "status", "msg_id": "m"}
    with pytest.raises(BadMessage) as refused:  # (the reader drops it, counted as too_deep)
        replies.offer("iopub", Message([*parts[:4], deep], status, {"msg_id": "p"}))
    assert refused.value.reason == TOO_DEEP
