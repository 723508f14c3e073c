"""OutputCollector: iopub messages -> nbformat outputs, as a notebook front end would apply them."""

from __future__ import annotations

from typing import Any

import nbformat
import orjson
import pytest

from gateway.execution.feed import ExecutionFeed
from gateway.execution.outputs import EVENT_COST, MAX_DEPTH, OutputCollector, json_size, output_size
from gateway.jsonbytes import LARGE, TooDeep


def msg(msg_type: str, **content: Any) -> dict[str, Any]:
    return {"header": {"msg_type": msg_type}, "parent_header": {}, "metadata": {}, "content": content}


def collector(**caps: int) -> OutputCollector:
    return OutputCollector(max_output_bytes=caps.get("per", 1000), max_total_bytes=caps.get("total", 10_000),
                           event_cost=caps.get("event_cost", 0))


def test_streams_of_the_same_name_are_joined_and_order_is_kept() -> None:
    c = collector()
    for m in (msg("stream", name="stdout", text="a"), msg("stream", name="stdout", text="b"),
              msg("stream", name="stderr", text="e"), msg("stream", name="stdout", text="c")):
        c.apply(m)
    assert [(o["name"], o["text"]) for o in c.outputs] == [("stdout", "ab"), ("stderr", "e"), ("stdout", "c")]


def test_a_flood_of_small_chunks_is_one_output_read_at_any_time_and_snapshots_stay_as_taken() -> None:
    from gateway.execution.model import Execution

    c = collector(total=10 << 20)
    execution = Execution(sandbox_id="s", code="", timeout=1)
    execution.outputs, execution.settle = c.outputs, c.settle
    shared = c.outputs
    for i in range(20_000):
        c.apply(msg("stream", name="stdout", text=f"{i}\n"))
        if i == 999:
            snapshot = execution.to_record()["outputs"]
            assert execution.stream_text("stdout") == "".join(f"{n}\n" for n in range(1000))
    assert snapshot == [{"output_type": "stream", "name": "stdout", "text": "".join(f"{n}\n" for n in range(1000))}]
    assert execution.stream_text("stdout") == "".join(f"{n}\n" for n in range(20_000))
    assert len(c.outputs) == 1 and c.outputs is shared
    c.apply(msg("stream", name="stderr", text="e"))
    c.apply(msg("stream", name="stdout", text="again"))
    assert [(o["name"], o["text"][-5:]) for o in shared] == [("stdout", "9999\n"), ("stderr", "e"), ("stdout", "again")]


def test_stream_text_that_is_not_text_is_not_joined() -> None:
    c = collector()
    c.apply(msg("stream", name="stdout", text="a"))
    c.apply(msg("stream", name="stdout", text=["not", "text"]))
    c.apply(msg("stream", name="stdout", text="b"))
    assert [o["text"] for o in c.outputs] == ["a", ["not", "text"], "b"]


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
    original = {"output_type": "display_data", "data": {"image/png": "A" * 500, "text/plain": "fig"}, "metadata": {}}
    assert output["metadata"]["truncated"]["original_bytes"] == output_size(original)


def test_output_past_the_total_cap_is_dropped_behind_one_note() -> None:
    chunk = {"output_type": "stream", "name": "stdout", "text": "x" * 100}
    c = collector(per=1000, total=2 * output_size(chunk) + 10)
    for _ in range(10):
        c.apply(msg("stream", name="stdout", text="x" * 100))
    assert c.truncated
    text = "".join(o["text"] for o in c.outputs)
    assert text.count("x" * 100) == 2
    assert text.count("output truncated") == 1


def shown(c: OutputCollector) -> str:
    return "".join(o.get("text", "") for o in c.outputs)


def test_updates_of_one_display_cost_only_its_latest_content() -> None:
    c = collector(per=2000, total=5000)
    c.apply(msg("display_data", data={"text/plain": "0"}, metadata={}, transient={"display_id": "p"}))
    for n in range(100):  # 100 x 1000 bytes: 20 times the cap, but only the latest is held
        events = c.apply(msg("update_display_data", data={"text/plain": str(n % 10) * 1000}, metadata={},
                             transient={"display_id": "p"}))
        assert [e["type"] for e in events] == ["update_display"]
    assert not c.truncated and c.outputs[0]["data"] == {"text/plain": "9" * 1000}


def test_updates_of_many_displays_count_against_the_cap() -> None:
    c = collector(per=2000, total=5000)
    for n in range(20):
        c.apply(msg("update_display_data", data={"text/plain": "u" * 1000}, metadata={},
                    transient={"display_id": f"d{n}"}))
    assert c.truncated and c.total_bytes <= 5000
    assert shown(c).count("output truncated") == 1
    # Once over, nothing more is kept or streamed.
    assert c.apply(msg("update_display_data", data={"text/plain": "late"}, metadata={},
                       transient={"display_id": "d0"})) == []
    assert c.apply(msg("clear_output", wait=False)) == []


def test_an_update_over_the_per_output_cap_becomes_a_note_and_keeps_the_display() -> None:
    c = collector(per=500, total=100_000)
    c.apply(msg("display_data", data={"text/plain": "0%"}, metadata={}, transient={"display_id": "p"}))
    events = c.apply(msg("update_display_data", data={"image/png": "A" * 5000}, metadata={},
                         transient={"display_id": "p"}))
    assert events[0]["type"] == "update_display" and "truncated" in events[0]["output"]["data"]["text/plain"]
    assert c.outputs[0]["output_type"] == "display_data" and "truncated" in c.outputs[0]["data"]["text/plain"]


def test_metadata_and_display_ids_count_too() -> None:
    c = collector(per=1000, total=100_000)
    c.apply(msg("display_data", data={"text/plain": "x"}, metadata={"huge": "m" * 5000}))
    (output,) = c.outputs
    assert c.truncated and output_size(output) <= 1000 and "m" * 100 not in str(output)
    c = collector(per=1000, total=3000)
    c.apply(msg("display_data", data={"text/plain": "x"}, metadata={}, transient={"display_id": "i" * 4000}))
    assert c.truncated and c.outputs[-1]["name"] == "stderr"


def test_clear_output_with_nothing_to_clear_is_dropped() -> None:
    c = collector(event_cost=EVENT_COST, total=100_000)
    for _ in range(1000):
        assert c.apply(msg("clear_output", wait=False)) == []
    assert c.total_bytes == 0


def test_a_flood_of_tiny_outputs_is_bounded_by_their_event_cost() -> None:
    c = collector(event_cost=EVENT_COST, total=1 << 20)
    feed = ExecutionFeed()
    for n in range(50_000):
        for event in c.apply(msg("stream", name="stdout" if n % 2 else "stderr", text="x")):
            feed.publish(event)
    assert c.truncated
    assert len(c.outputs) < (1 << 20) // EVENT_COST + 2
    assert len(feed) < (1 << 20) // EVENT_COST + 2


def test_output_lost_before_the_collector_is_said_once_and_truncates() -> None:
    c = collector()
    c.apply(msg("stream", name="stdout", text="a"))
    events = c.lost() + c.lost()
    assert c.truncated and len(events) == 2  # one note per run of drops (each run reports once)
    assert all("output dropped" in e["output"]["text"] for e in events)


def nested(levels: int, inner: Any = None) -> Any:
    """``inner`` in ``levels`` lists (built without recursion)."""
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def test_sizes_are_measured_without_recursion_and_nesting_is_bounded() -> None:
    assert json_size({"a": ["xy", 1, {"b": None}]}) == (8 + 1) + 3 * 8 + 2 + 8 + (8 + 1) + 8
    assert json_size(nested(MAX_DEPTH - 1, {})) == 8 * (MAX_DEPTH - 1)  # the 64th level holds a plain value
    for too_deep in (nested(MAX_DEPTH, []), nested(100_000)):  # (far past the recursion limit)
        with pytest.raises(TooDeep):
            json_size(too_deep)


@pytest.mark.parametrize("kind, content", [
    ("display_data", {"data": {"application/json": nested(200)}, "metadata": {}}),
    ("display_data", {"data": {"text/plain": "x"}, "metadata": nested(100_000)}),
    ("execute_result", {"data": {"text/plain": "x"}, "metadata": {}, "execution_count": nested(100)}),
    ("error", {"ename": nested(100), "evalue": "v", "traceback": []}),
    ("error", {"ename": "E", "evalue": "v", "traceback": ["t", nested(100)]}),
    ("stream", {"name": "stdout", "text": nested(100)}),
])
def test_an_output_nested_too_deep_becomes_a_note_of_its_kind(kind: str, content: dict[str, Any]) -> None:
    c = collector(per=1000)
    events = c.apply(msg(kind, **content))
    (output,) = c.outputs
    assert c.truncated and events == [{"type": "output", "output": output}]
    assert output["output_type"] == kind and f"nested deeper than {MAX_DEPTH} levels" in str(output)
    assert output_size(output) < 200  # (its own size is measured again: it is shallow)
    if kind == "stream":
        assert output["name"] == "stdout"
    nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=c.outputs)]))


def test_an_update_nested_too_deep_shows_a_note_in_its_display() -> None:
    c = collector(per=1000)
    c.apply(msg("display_data", data={"text/plain": "0%"}, metadata={}, transient={"display_id": "p"}))
    events = c.apply(msg("update_display_data", data={"application/json": nested(100)}, metadata={},
                         transient={"display_id": "p"}))
    assert events[0]["type"] == "update_display" and "nested deeper" in events[0]["output"]["data"]["text/plain"]
    assert "nested deeper" in c.outputs[0]["data"]["text/plain"] and c.truncated


@pytest.mark.parametrize("kind", ["stream", "display_data", "execute_result", "error", "update_display_data"])
def test_an_output_too_deep_to_be_read_is_a_note_in_its_place(kind: str) -> None:
    c = collector(per=1000)
    c.apply(msg("stream", name="stdout", text="before"))
    events = c.unreadable(kind)
    c.apply(msg("stream", name="stdout", text="after"))
    assert c.truncated and len(events) == 1
    note = events[0]["output"]
    assert note["output_type"] == ("display_data" if kind == "update_display_data" else kind)
    assert f"nested deeper than {MAX_DEPTH} levels" in str(note)
    assert c.unreadable("status") == []
    nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=c.outputs)]))


def test_a_transient_that_is_no_object_and_a_stream_name_that_is_no_text_are_taken_as_nothing() -> None:
    c = collector()
    c.apply(msg("display_data", data={"text/plain": "x"}, metadata={}, transient=["not", "an", "object"]))
    c.apply(msg("stream", name=nested(100), text="y"))
    assert [o.get("data", o.get("name")) for o in c.outputs] == [{"text/plain": "x"}, "stderr"]


def test_a_large_display_is_encoded_when_it_is_kept_a_small_one_when_first_asked() -> None:
    # A large output's JSON is made as it arrives, while the kernel finishes the cell, not on the
    # way to the response once the execution has ended.
    c = collector(per=10 << 20, total=20 << 20)
    c.apply(msg("display_data", data={"image/png": "A" * LARGE}, metadata={}))
    c.apply(msg("execute_result", data={"text/plain": "2"}, metadata={}, execution_count=1))
    large, small = c.outputs
    assert large._json is not None and small._json is None
    assert orjson.loads(large.json) == {"output_type": "display_data", "data": {"image/png": "A" * LARGE},
                                        "metadata": {}}
