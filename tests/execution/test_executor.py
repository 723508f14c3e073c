"""Executor over a scripted connection: what it makes of messages a real kernel rarely sends in order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gateway.execution.executor import MAX_REPLY_TEXT, Executor, OutputCaps, reply_fields
from gateway.execution.model import Execution
from gateway.execution.replies import Replies


def iopub(msg_type: str, parent: str = "run", **content: Any) -> tuple[str, dict[str, Any]]:
    return "iopub", {"header": {"msg_type": msg_type}, "parent_header": {"msg_id": parent}, "content": content}


class ScriptedConnection:
    """Answers the execution with ``script``, and the barrier a late-output kernel is sent with ``late``."""

    def __init__(self, script: list[tuple[str, Any]], late: list[tuple[str, Any]]) -> None:
        self.replies = Replies()
        self.script, self.late = script, late

    def execute(self, code: str) -> str:
        return "run"

    @contextlib.contextmanager
    def request(self, msg_id: str, *, max_bytes: int | None = None) -> Iterator[Replies]:
        for item in self.script:
            self.replies.put_nowait(item)
        yield self.replies

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        for item in self.late:
            self.replies.put_nowait(item)
        return "barrier"

    @contextlib.contextmanager
    def also(self, msg_id: str, replies: Replies) -> Iterator[None]:
        yield

    def silent_for(self, seconds: float) -> bool:
        return False


async def interrupt() -> None:
    raise AssertionError("nothing to interrupt")


async def test_outputs_too_deep_to_read_are_notes_also_when_they_trail_the_idle() -> None:
    connection = ScriptedConnection(
        script=[("nested", "display_data"), iopub("status", execution_state="idle"),
                ("shell", {"content": {"status": "ok", "execution_count": [[1]], "traceback": "x"}})],
        late=[("nested", "execute_result"), iopub("status", parent="barrier", execution_state="idle")],
    )
    executor = Executor(connection, interrupt=interrupt, caps=OutputCaps(), late_output=True)  # type: ignore[arg-type]
    execution = Execution(sandbox_id="s", code="", timeout=10)
    assert await executor.run(execution)
    assert execution.status == "completed" and execution.truncated and execution.execution_count is None
    assert [(o["output_type"], "nested deeper" in str(o)) for o in execution.outputs] == [
        ("display_data", True), ("execute_result", True)]


def test_a_reply_keeps_at_most_so_much_of_its_error() -> None:
    huge = MAX_REPLY_TEXT + 10
    kept = reply_fields({"status": "error", "ename": "E" * huge, "evalue": "v" * huge,
                         "traceback": ["t" * 1000] * 2000 + [5]})
    assert kept["ename"] == "E" * MAX_REPLY_TEXT + "\n[ename truncated: 10 more characters]"
    assert kept["evalue"] == "v" * MAX_REPLY_TEXT + "\n[evalue truncated: 10 more characters]"
    lines = kept["traceback"]
    whole = MAX_REPLY_TEXT // 1001  # (lines that fit whole, each costing one more than its length)
    assert lines[:whole] == ["t" * 1000] * whole
    assert lines[whole] == "t" * (MAX_REPLY_TEXT - whole * 1001)
    assert lines[-1] == f"[traceback truncated: {2000 - whole} more lines]" and len(lines) == whole + 2
    small = {"status": "error", "ename": "E", "evalue": "v", "traceback": ["a", "b"]}
    assert reply_fields(small) == small
