"""Turns a kernel's iopub messages into the execution's ordered nbformat v4 outputs.

    collector = OutputCollector(max_output_bytes=5 << 20, max_total_bytes=10 << 20)
    events = collector.apply(msg)   # what to stream to live clients for this message
    collector.outputs               # what the stored execution (and its notebook) holds

Consecutive stream chunks of the same name are joined (once, when the outputs are read: joining
each chunk as it comes would copy the text so far every time, quadratic in a flood of small
chunks), ``clear_output`` (also ``wait=True``) and
``update_display_data`` are applied as a notebook front end would, and the two caps bound the
memory an execution holds, whatever the kernel sends: one output over ``max_output_bytes`` is
replaced by a note saying how big it was, and once what the execution holds (every kind of event
counted, ``update_display`` included, see ``OutputCollector``) passes ``max_total_bytes`` the
rest is dropped behind one note. An output nested deeper than ``MAX_DEPTH`` levels (JSON in a
MIME bundle, an error's traceback: a kernel controls every field) is replaced by a note of the
same kind too, so nothing the gateway keeps, encodes or measures is deeper than that (sizes are
measured without recursion); so is one too deep to be read at all (``unreadable``). Each marks
the collector ``truncated``.
"""

from __future__ import annotations

from typing import Any

from gateway.execution.messages import OUTRAN, OVERSIZED
from gateway.jsonbytes import LARGE, EncodedObject, TooDeep

#: The note an execution gets where output was lost before it reached the collector, by why.
LOST_NOTES = {
    OUTRAN: "\n[output dropped: the kernel produced it faster than the gateway could take it]\n",
    OVERSIZED: "\n[output dropped: a message from the kernel was larger than the gateway takes]\n",
}

#: Most levels of nesting an output may have (the output itself is the first): deeper ones are
#: replaced by a note. Far more than any renderer shows, far less than any recursive encoder (ours
#: falls back to the standard library's past orjson's 254) or a client's parser could take.
MAX_DEPTH = 64

OUTPUT_MESSAGES = frozenset({"stream", "display_data", "execute_result", "error", "update_display_data"})


def output_from_msg(msg: dict[str, Any]) -> dict[str, Any]:
    """The nbformat v4 output of an iopub message, as ``nbformat.v4.output_from_msg`` makes it.

    Without its per-output JSON-schema validation (~170 µs each): the kernel's messages already
    have this shape, and tests validate whole notebooks of our outputs with nbformat.
    """
    msg_type = msg["header"]["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "error":
        return {"output_type": "error", "ename": content["ename"], "evalue": content["evalue"],
                "traceback": content["traceback"]}
    output = {"output_type": msg_type, "data": content["data"], "metadata": content.get("metadata", {})}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    return output


def json_size(value: Any) -> int:
    """Approximate bytes of a decoded JSON value: its strings' lengths plus a little per item;
    ``TooDeep`` if it nests deeper than ``MAX_DEPTH``. A walk, not a recursion: no depth a
    kernel sends can exhaust the stack."""
    size = 0
    waiting: list[tuple[Any, int]] = [(value, 1)]
    while waiting:
        item, depth = waiting.pop()
        if isinstance(item, str):
            size += len(item)
            continue
        if isinstance(item, dict):
            size += sum(8 + (len(key) if isinstance(key, str) else 8) for key in item)
            children: Any = item.values()
        elif isinstance(item, list):
            size += 8 * len(item)
            children = item
        else:
            size += 8
            continue
        if depth >= MAX_DEPTH and any(isinstance(child, (dict, list)) for child in children):
            raise TooDeep(f"nested deeper than {MAX_DEPTH} levels")
        for child in children:
            if isinstance(child, str):
                size += len(child)
            elif isinstance(child, (dict, list)):
                waiting.append((child, depth + 1))
            else:
                size += 8
    return size


def output_size(output: dict[str, Any]) -> int:
    """Approximate bytes of an output: every field counts (a kernel controls all of them,
    ``metadata`` included); ``TooDeep`` past ``MAX_DEPTH`` (never for an output kept here)."""
    return json_size(output)


def human_size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


#: What holding one live event costs the gateway besides its payload (its dicts, in the
#: execution's feed), charged to the execution's output cap so that a flood of tiny outputs is
#: bounded too, not only a flood of large ones.
EVENT_COST = 256
#: What a superseded ``update_display`` still costs: the feed keeps a hole in its place.
SUPERSEDED_COST = 16
#: Stream names nbformat knows; any other name is shown as stderr.
STREAM_NAMES = frozenset({"stdout", "stderr"})


class OutputCollector:
    """Applies iopub messages of one execution to its list of outputs.

    ``total_bytes`` is what the execution's output costs so far, counted as it is kept: each
    output's size plus ``EVENT_COST`` for its live event; an ``update_display`` costs the growth
    of that display's latest content (only the latest is kept, here and in the feed); a
    ``clear_output`` with nothing to clear is dropped. Past ``max_total_bytes`` nothing more is
    kept (``clear_output`` included) but one note saying so.
    """

    def __init__(self, *, max_output_bytes: int, max_total_bytes: int, event_cost: int = EVENT_COST) -> None:
        self.max_output_bytes = max_output_bytes
        self.max_total_bytes = max_total_bytes
        self.event_cost = event_cost
        self._outputs: list[dict[str, Any]] = []
        #: Stream text arrived for the last output (a stream) and not joined into it yet.
        self._tail: list[str] = []
        self.truncated = False
        self.total_bytes = 0
        self._clear_on_next_output = False
        self._display_ids: dict[str, list[int]] = {}
        #: display id -> size of its latest update (what an update of it holds).
        self._updated: dict[str, int] = {}
        self._dropping = False

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """The outputs so far (the same list object all along)."""
        self.settle()
        return self._outputs

    def settle(self) -> None:
        """Join the stream text waiting into the last output (replaced, not changed: see ``Execution.to_record``)."""
        if self._tail:
            last = self._outputs[-1]
            self._tail.insert(0, last["text"])  # one join: each character copied once
            self._outputs[-1] = {**last, "text": "".join(self._tail)}
            self._tail.clear()

    def apply(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply one iopub message; return the live events it produced (possibly none)."""
        msg_type = msg["header"]["msg_type"]
        if msg_type == "clear_output":
            return self._clear(wait=msg["content"].get("wait", False))
        if msg_type not in OUTPUT_MESSAGES or self._dropping:
            return []
        events = self._flush_pending_clear()
        transient = msg["content"].get("transient")
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if not isinstance(display_id, str):
            display_id = None
        if msg_type == "update_display_data":
            return events + self._update_display(display_id, msg)
        return events + self._keep(*self._fit(output_from_msg(msg)), display_id)

    def unreadable(self, msg_type: str) -> list[dict[str, Any]]:
        """An output message too deep to be read at all (``Replies``' ``nested``): a note in its place
        (an ``update_display_data``'s as a new display: which display it meant cannot be read)."""
        if msg_type not in OUTPUT_MESSAGES or self._dropping:
            return []
        events = self._flush_pending_clear()
        kind = "display_data" if msg_type == "update_display_data" else msg_type
        note = self._too_deep_note({"output_type": kind, "name": "stderr"})
        return events + self._keep(note, output_size(note), None)

    def _keep(self, output: dict[str, Any], size: int, display_id: str | None) -> list[dict[str, Any]]:
        """Keep an output that fits the per-output cap (and charge it); its live event."""
        if not self._charge(size + self.event_cost + len(display_id or "")):
            return self._drop_rest()
        if output["output_type"] != "stream":  # (stream text is joined later: encoded then)
            output = EncodedObject(output)  # encoded once for its live event and its execution's record
            if size >= LARGE:
                # Now, while the kernel finishes the cell (its reply and idle come a few ms later),
                # rather than when the execution ends, on the way to its response.
                _ = output.json
        self._append(output, display_id)
        if display_id:  # so a live client knows which output a later update_display replaces
            return [{"type": "output", "output": output, "display_id": display_id}]
        return [{"type": "output", "output": output}]

    # -- outputs -------------------------------------------------------------------------------

    def _append(self, output: dict[str, Any], display_id: str | None) -> None:
        last = self._outputs[-1] if self._outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
            and isinstance(last["text"], str)
            and isinstance(output["text"], str)
        ):
            # Joined like a notebook does, so a printing loop is one output, not thousands.
            self._tail.append(output["text"])
            return
        self.settle()
        if display_id:
            self._display_ids.setdefault(display_id, []).append(len(self._outputs))
        self._outputs.append(output)

    def _update_display(self, display_id: str | None, msg: dict[str, Any]) -> list[dict[str, Any]]:
        if not display_id:
            return []
        content = msg["content"]
        update, size = self._fit(
            {"output_type": "display_data", "data": content.get("data", {}), "metadata": content.get("metadata", {})}
        )
        previous = self._updated.get(display_id)
        cost = size + self.event_cost + len(display_id) if previous is None else size - previous + SUPERSEDED_COST
        if not self._charge(cost):
            return self._drop_rest()
        self._updated[display_id] = size
        for index in self._display_ids.get(display_id, []):
            self._outputs[index] = {**self._outputs[index], "data": update["data"], "metadata": update["metadata"]}
        return [{"type": "update_display", "display_id": display_id, "output": update}]

    def _clear(self, *, wait: bool) -> list[dict[str, Any]]:
        if wait:
            self._clear_on_next_output = True
            return []
        self._clear_on_next_output = False
        return self._clear_now(wait=False)

    def _flush_pending_clear(self) -> list[dict[str, Any]]:
        if not self._clear_on_next_output:
            return []
        self._clear_on_next_output = False
        return self._clear_now(wait=True)

    def _clear_now(self, *, wait: bool) -> list[dict[str, Any]]:
        if not self._outputs or self._dropping:
            return []  # nothing to clear, for the stored execution as for a live client
        if not self._charge(self.event_cost):
            return self._drop_rest()
        self._tail.clear()
        self._outputs.clear()  # in place: the running execution shares this list
        self._display_ids = {}
        return [{"type": "clear_output", "wait": wait}]

    def lost(self, reason: str = OUTRAN) -> list[dict[str, Any]]:
        """Output was dropped before it got here (``OUTRAN``: the kernel outran the gateway;
        ``OVERSIZED``: one message was larger than a kernel may send): say so, once per run."""
        self.truncated = True
        if self._dropping:
            return []
        note = {"output_type": "stream", "name": "stderr", "text": LOST_NOTES.get(reason, LOST_NOTES[OUTRAN])}
        if not self._charge(self.event_cost + output_size(note)):
            return self._drop_rest()
        self._append(note, None)
        return [{"type": "output", "output": note}]

    # -- caps ------------------------------------------------------------------------------------

    def _charge(self, cost: int) -> bool:
        """Count ``cost`` against the execution's cap; False (and nothing counted) if it does not fit."""
        if self._dropping or self.total_bytes + cost > self.max_total_bytes:
            return False
        self.total_bytes += cost
        return True

    def _drop_rest(self) -> list[dict[str, Any]]:
        """Stop keeping output, behind one note (kept and streamed, past the cap: it is small)."""
        self.truncated = True
        self._dropping = True
        self._clear_on_next_output = False
        note = {
            "output_type": "stream",
            "name": "stderr",
            "text": f"\n[output truncated: this execution passed the {human_size(self.max_total_bytes)} "
            "output limit; further output was dropped]\n",
        }
        self._append(note, None)
        return [{"type": "output", "output": note}]

    def _fit(self, output: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The output as it may be kept (itself, or a note if it is too deep or over the per-output
        cap) and its size."""
        name = output.get("name")
        if output["output_type"] == "stream" and not (isinstance(name, str) and name in STREAM_NAMES):
            output = {**output, "name": "stderr"}
        try:
            size = output_size(output)
        except TooDeep:
            note = self._too_deep_note(output)
            return note, output_size(note)
        if size <= self.max_output_bytes:
            return output, size
        note = self._oversize_note(output, size)
        return note, output_size(note)

    def _too_deep_note(self, output: dict[str, Any]) -> dict[str, Any]:
        """A stand-in for an output nested deeper than ``MAX_DEPTH``: none of its fields is kept but its kind's."""
        self.truncated = True
        note = f"[output dropped: {output['output_type']} nested deeper than {MAX_DEPTH} levels]"
        return _stand_in({"output_type": output["output_type"], "name": output.get("name")}, note, room=0)

    def _oversize_note(self, output: dict[str, Any], size: int) -> dict[str, Any]:
        """A small stand-in for an output over the per-output cap; none of its fields stays large."""
        self.truncated = True
        note = (
            f"[output truncated: {output['output_type']} of {human_size(size)} is over the "
            f"{human_size(self.max_output_bytes)} per-output limit]"
        )
        replaced = _stand_in(output, note, room=max(self.max_output_bytes - len(note) - 64, 0))
        if "data" in replaced:
            replaced["metadata"] = {"truncated": {"original_bytes": size}}
        return replaced


def _stand_in(output: dict[str, Any], note: str, room: int) -> dict[str, Any]:
    """An output of ``output``'s kind saying ``note``, with at most ``room`` characters of its
    text (a stream's text, an error's value); any other field only if it is a plain value."""
    kind = output["output_type"]
    if kind == "stream":
        text = output.get("text")
        keep = text[:room] if isinstance(text, str) else ""
        return {"output_type": "stream", "name": output["name"], "text": f"{keep}\n{note}\n"}
    if kind == "error":
        ename, evalue = output.get("ename"), output.get("evalue")
        return {"output_type": "error", "ename": ename[:256] if isinstance(ename, str) else "Error",
                "evalue": evalue[: room // 2] if isinstance(evalue, str) else "", "traceback": [note]}
    replaced: dict[str, Any] = {"output_type": kind, "data": {"text/plain": note}, "metadata": {}}
    if kind == "execute_result":
        count = output.get("execution_count")
        replaced["execution_count"] = count if isinstance(count, int) else None
    return replaced
