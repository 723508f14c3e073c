"""An execution as MCP tool content: one text block (streams, values, tables as CSV, the error), one image per plot."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from mcp.types import ContentBlock, ImageContent, TextContent

TABLE_MIMES = ("application/vnd.code-gateway.table+json", "application/json")
IMAGE_MIMES = ("image/png", "image/jpeg")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_TEXT = 50_000


def execution_content(execution: dict[str, Any], *, sandbox_note: str = "") -> list[ContentBlock]:
    """``execution`` (the public JSON form) as a text block followed by an image block per PNG/JPEG."""
    texts: list[str] = [sandbox_note] if sandbox_note else []
    images: list[ContentBlock] = []
    for output in execution["outputs"]:
        kind = output["output_type"]
        if kind == "stream":
            texts.append(output["text"] if output["name"] == "stdout" else f"[stderr]\n{output['text']}")
        elif kind == "error":
            texts.append(ANSI.sub("", "\n".join(output.get("traceback") or [f"{output['ename']}: {output['evalue']}"])))
        elif kind in ("display_data", "execute_result"):
            data = output.get("data") or {}
            found = [ImageContent(type="image", data=str(data[m]).replace("\n", ""), mime_type=m)
                     for m in IMAGE_MIMES if m in data]
            images += found
            table = next((data[m] for m in TABLE_MIMES if isinstance(data.get(m), dict) and "rows" in data[m]), None)
            if table is not None:
                texts.append(table_text(table))
            elif found:
                texts.append(f"[image {len(images)}: {found[0].mime_type}]")
            elif "text/markdown" in data:
                texts.append(str(data["text/markdown"]))
            elif "text/plain" in data:
                texts.append(str(data["text/plain"]))
    error = execution.get("error")
    if error and error.get("code") != "exception":
        texts.append(f"[{execution['status']}: {error['code']}] {error.get('evalue', '')}")
    elif execution["status"] not in ("completed", "failed"):
        texts.append(f"[{execution['status']}]")
    if execution.get("truncated"):
        texts.append("[output truncated by the gateway]")
    text = "\n".join(t.rstrip("\n") for t in texts if t) or "(no output)"
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters]"
    return [TextContent(type="text", text=text), *images]


def table_text(table: dict[str, Any]) -> str:
    """A DataFrame's JSON table form as CSV (index first), saying when rows were left out."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["", *table.get("columns", [])])
    index = table.get("index") or list(range(len(table["rows"])))
    for label, row in zip(index, table["rows"]):
        writer.writerow([label, *row])
    more = f" (first {len(table['rows'])} of {table.get('row_count')} rows)" if table.get("truncated") else ""
    return f"[table{more}]\n{out.getvalue()}"
