"""Turns a kernel's iopub messages into the execution's ordered nbformat v4 outputs.

    collector = OutputCollector(max_output_bytes=5 << 20, max_total_bytes=10 << 20)
    events = collector.apply(msg)   # what to stream to live clients for this message
    collector.outputs               # what the stored execution (and its notebook) holds

Consecutive stream chunks of the same name are joined, ``clear_output`` (also ``wait=True``) and
``update_display_data`` are applied as a notebook front end would, and the two caps bound memory:
one output over ``max_output_bytes`` is replaced by a note saying how big it was, and once the
execution's outputs pass ``max_total_bytes`` the rest is dropped behind one note. Either marks
the collector ``truncated``.
"""

from __future__ import annotations

from typing import Any

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


def output_size(output: dict[str, Any]) -> int:
    """Approximate bytes of an output: the sizes of its text and MIME payloads."""
    if output["output_type"] == "stream":
        return len(output["text"])
    if output["output_type"] == "error":
        return sum(len(line) for line in output.get("traceback", [])) + len(output.get("evalue", ""))
    return sum(len(v) if isinstance(v, str) else len(str(v)) for v in output.get("data", {}).values())


def human_size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


class OutputCollector:
    """Applies iopub messages of one execution to its list of outputs."""

    def __init__(self, *, max_output_bytes: int, max_total_bytes: int) -> None:
        self.max_output_bytes = max_output_bytes
        self.max_total_bytes = max_total_bytes
        self.outputs: list[dict[str, Any]] = []
        self.truncated = False
        self.total_bytes = 0
        self._clear_on_next_output = False
        self._display_ids: dict[str, list[int]] = {}
        self._dropping = False

    def apply(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply one iopub message; return the live events it produced (possibly none)."""
        msg_type = msg["header"]["msg_type"]
        if msg_type == "clear_output":
            return self._clear(wait=msg["content"].get("wait", False))
        if msg_type not in OUTPUT_MESSAGES:
            return []
        events = self._flush_pending_clear()
        display_id = (msg["content"].get("transient") or {}).get("display_id")
        if msg_type == "update_display_data":
            return events + self._update_display(display_id, msg)
        output = self._within_caps(output_from_msg(msg))
        if output is None:
            return events
        self._append(output, display_id)
        if display_id:  # so a live client knows which output a later update_display replaces
            return events + [{"type": "output", "output": output, "display_id": display_id}]
        return events + [{"type": "output", "output": output}]

    # -- outputs -------------------------------------------------------------------------------

    def _append(self, output: dict[str, Any], display_id: str | None) -> None:
        last = self.outputs[-1] if self.outputs else None
        if (
            output["output_type"] == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            # Joined like a notebook does, so a printing loop is one output, not thousands.
            self.outputs[-1] = {**last, "text": last["text"] + output["text"]}
            return
        if display_id:
            self._display_ids.setdefault(display_id, []).append(len(self.outputs))
        self.outputs.append(output)

    def _update_display(self, display_id: str | None, msg: dict[str, Any]) -> list[dict[str, Any]]:
        if not display_id:
            return []
        content = msg["content"]
        for index in self._display_ids.get(display_id, []):
            updated = {**self.outputs[index], "data": content.get("data", {}), "metadata": content.get("metadata", {})}
            self.outputs[index] = self._within_caps(updated) or self.outputs[index]
        update = {"output_type": "display_data", "data": content.get("data", {}), "metadata": content.get("metadata", {})}
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
        self.outputs.clear()  # in place: the running execution shares this list
        self._display_ids = {}
        return [{"type": "clear_output", "wait": wait}]

    # -- caps ------------------------------------------------------------------------------------

    def _within_caps(self, output: dict[str, Any]) -> dict[str, Any] | None:
        """The output as it may be kept: itself, a truncation note, or None once over the total cap."""
        if self._dropping:
            return None
        size = output_size(output)
        if size > self.max_output_bytes:
            self.truncated = True
            output = self._oversize_note(output, size)
            size = output_size(output)
        if self.total_bytes + size > self.max_total_bytes:
            self.truncated = True
            self._dropping = True
            return {
                "output_type": "stream",
                "name": "stderr",
                "text": f"\n[output truncated: this execution passed the {human_size(self.max_total_bytes)} "
                "output limit; further output was dropped]\n",
            }
        self.total_bytes += size
        return output

    def _oversize_note(self, output: dict[str, Any], size: int) -> dict[str, Any]:
        note = (
            f"[output truncated: {output['output_type']} of {human_size(size)} is over the "
            f"{human_size(self.max_output_bytes)} per-output limit]"
        )
        if output["output_type"] == "stream":
            keep = output["text"][: self.max_output_bytes]
            return {**output, "text": f"{keep}\n{note}\n"}
        if output["output_type"] == "error":
            return {**output, "traceback": [note]}
        metadata = {**output.get("metadata", {}), "truncated": {"original_bytes": size}}
        return {**output, "data": {"text/plain": note}, "metadata": metadata}
