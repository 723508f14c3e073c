"""OutputCollector: iopub messages -> nbformat outputs, as a notebook front end would apply them."""

from __future__ import annotations

from typing import Any

import nbformat

from gateway.execution.outputs import OutputCollector


def msg(msg_type: str, **content: Any) -> dict[str, Any]:
    return {"header": {"msg_type": msg_type}, "parent_header": {}, "metadata": {}, "content": content}


def collector(**caps: int) -> OutputCollector:
    return OutputCollector(max_output_bytes=caps.get("per", 1000), max_total_bytes=caps.get("total", 10_000))


def test_streams_of_the_same_name_are_joined_and_order_is_kept() -> None:
    c = collector()
    for m in (msg("stream", name="stdout", text="a"), msg("stream", name="stdout", text="b"),
              msg("stream", name="stderr", text="e"), msg("stream", name="stdout", text="c")):
        c.apply(m)
    assert [(o["name"], o["text"]) for o in c.outputs] == [("stdout", "ab"), ("stderr", "e"), ("stdout", "c")]


def test_each_message_is_one_live_event() -> None:
    c = collector()
    events = c.apply(msg("stream", name="stdout", text="a")) + c.apply(msg("stream", name="stdout", text="b"))
    assert [e["output"]["text"] for e in events] == ["a", "b"]


def test_outputs_are_valid_nbformat() -> None:
    c = collector()
    c.apply(msg("stream", name="stdout", text="x\n"))
    c.apply(msg("display_data", data={"text/plain": "d"}, metadata={}))
    c.apply(msg("execute_result", data={"text/plain": "1"}, metadata={}, execution_count=3))
    c.apply(msg("error", ename="E", evalue="v", traceback=["t"]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=c.outputs, execution_count=3)])
    nbformat.validate(nb)


def test_clear_output_and_wait() -> None:
    c = collector()
    c.apply(msg("stream", name="stdout", text="old"))
    assert c.apply(msg("clear_output", wait=False)) == [{"type": "clear_output", "wait": False}]
    assert c.outputs == []
    c.apply(msg("stream", name="stdout", text="kept"))
    assert c.apply(msg("clear_output", wait=True)) == []
    assert [o["text"] for o in c.outputs] == ["kept"]  # cleared only when the next output comes
    events = c.apply(msg("stream", name="stdout", text="new"))
    assert [e["type"] for e in events] == ["clear_output", "output"]
    assert [o["text"] for o in c.outputs] == ["new"]


def test_update_display_data_changes_the_earlier_output() -> None:
    c = collector()
    c.apply(msg("display_data", data={"text/plain": "0%"}, metadata={}, transient={"display_id": "p"}))
    c.apply(msg("stream", name="stdout", text="between"))
    events = c.apply(msg("update_display_data", data={"text/plain": "100%"}, metadata={}, transient={"display_id": "p"}))
    assert events[0]["type"] == "update_display" and events[0]["display_id"] == "p"
    assert c.outputs[0]["data"] == {"text/plain": "100%"}
    assert len(c.outputs) == 2


def test_an_output_over_the_per_output_cap_becomes_a_note() -> None:
    c = collector(per=100)
    c.apply(msg("display_data", data={"image/png": "A" * 500, "text/plain": "fig"}, metadata={}))
    (output,) = c.outputs
    assert c.truncated
    assert "truncated" in output["data"]["text/plain"]
    assert "image/png" not in output["data"]
    assert output["metadata"]["truncated"]["original_bytes"] == 503


def test_output_past_the_total_cap_is_dropped_behind_one_note() -> None:
    c = collector(per=1000, total=250)
    for _ in range(10):
        c.apply(msg("stream", name="stdout", text="x" * 100))
    assert c.truncated
    text = "".join(o["text"] for o in c.outputs)
    assert text.count("x" * 100) == 2
    assert text.count("output truncated") == 1
