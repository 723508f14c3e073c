"""Our execution events in the code interpreter's NDJSON lines (what ``run_code`` parses).

    lines = E2BLines()
    for line in lines.of(event):     # each event of the execution's feed
        write(json.dumps(line) + "\\n")

The lines are those of E2B's code interpreter server: ``stdout``/``stderr`` (``text``,
``timestamp``), ``result`` (one field per format, ``is_main_result`` for the execute_result,
``extra`` for the formats it has no field for), ``error`` (``name``, ``value``, ``traceback``),
``number_of_executions``, then ``end_of_execution``. Like E2B, a ``text/plain`` that is a
quoted string comes without its quotes, and display updates and clears are not forwarded.
Our DataFrame table (``application/vnd.code-gateway.table+json``) becomes E2B's ``data``:
``{column: [values...]}``.
"""

from __future__ import annotations

from typing import Any

from gateway import timestamps

#: MIME type -> the field of E2B's ``Result`` that carries it.
FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}
TABLE = "application/vnd.code-gateway.table+json"


def columns_of(table: dict[str, Any]) -> dict[str, list[Any]]:
    """Our table as pandas' ``to_dict(orient="list")``: what E2B's ``data`` holds."""
    columns = [str(c) for c in table.get("columns") or []]
    rows = table.get("rows") or []
    return {name: [row[i] if i < len(row) else None for row in rows] for i, name in enumerate(columns)}


def result_line(data: dict[str, Any], *, main: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "result", "is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        field = FIELDS.get(mime)
        if field is not None:
            line[field] = value
        elif mime == TABLE and isinstance(value, dict):
            line.setdefault("data", columns_of(value))
        else:
            extra[mime] = value
    text = line.get("text")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        line["text"] = text[1:-1]
    if extra:
        line["extra"] = extra
    return line


def error_line(name: str, value: str, traceback: list[str] | str) -> dict[str, Any]:
    joined = traceback if isinstance(traceback, str) else "\n".join(traceback)
    return {"type": "error", "name": name, "value": value, "traceback": joined}


class E2BLines:
    """Turns one execution's events into E2B lines, remembering whether its error was told."""

    def __init__(self) -> None:
        self.error_sent = False

    def of(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "output":
            return self._output(event["output"])
        if kind == "execution":
            return self._end(event["execution"])
        return []  # clear_output, update_display: E2B's server does not forward them either

    def _output(self, output: dict[str, Any]) -> list[dict[str, Any]]:
        kind = output.get("output_type")
        if kind == "stream":
            name = "stderr" if output.get("name") == "stderr" else "stdout"
            return [{"type": name, "text": output.get("text", ""), "timestamp": timestamps.to_iso(timestamps.now())}]
        if kind in ("execute_result", "display_data"):
            return [result_line(output.get("data") or {}, main=kind == "execute_result")]
        if kind == "error":
            self.error_sent = True
            return [error_line(output.get("ename", ""), output.get("evalue", ""), output.get("traceback") or [])]
        return []

    def _end(self, execution: dict[str, Any]) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        error = execution.get("error")
        if error and not self.error_sent:
            # Not the code's own exception (that came as an output): a timeout, a cancellation, a dead kernel.
            lines.append(error_line(error.get("ename", "Error"), error.get("evalue", ""), error.get("traceback") or []))
        if execution.get("execution_count") is not None:
            lines.append({"type": "number_of_executions", "execution_count": execution["execution_count"]})
        lines.append({"type": "end_of_execution"})
        return lines
