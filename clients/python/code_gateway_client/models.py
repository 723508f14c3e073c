"""Typed views of what the gateway returns: executions and their outputs, sandboxes, files.

Every object keeps the JSON it came from in ``raw``, so fields this SDK does not know yet
(newer gateways) are still at hand.
"""

from __future__ import annotations

import base64
import importlib
import dataclasses
import os
from typing import Any

from code_gateway_client.errors import ExecutionError

#: The JSON table form of DataFrames and Series (the gateway's kernels add it beside text/html).
TABLE_MIME = "application/vnd.code-gateway.table+json"
#: Older gateways sent the same table form as plain JSON.
LEGACY_TABLE_MIME = "application/json"
TABLE_KEYS = frozenset({"columns", "index", "rows"})
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg", "image/gif": ".gif"}


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """Why an execution did not complete; ``code`` is ``exception`` when the code itself raised."""

    code: str
    ename: str
    evalue: str
    traceback: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(str(data.get("code", "")), str(data.get("ename", "")), str(data.get("evalue", "")),
                   [str(line) for line in data.get("traceback") or []])


@dataclasses.dataclass(frozen=True)
class Image:
    """One image output: PNG/JPEG/GIF bytes (decoded from base64) or SVG text as UTF-8 bytes."""

    mime: str
    data: bytes

    @property
    def suffix(self) -> str:
        return SUFFIXES.get(self.mime, ".bin")

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as file:
            file.write(self.data)


@dataclasses.dataclass(frozen=True)
class Table:
    """A DataFrame or Series as the gateway sends it: at most a bounded number of rows (``truncated``)."""

    columns: list[Any]
    index: list[Any]
    rows: list[list[Any]]
    dtypes: list[str]
    row_count: int
    truncated: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        rows = [list(row) for row in data.get("rows") or []]
        return cls(list(data.get("columns") or []), list(data.get("index") or []), rows,
                   [str(d) for d in data.get("dtypes") or []], int(data.get("row_count", len(rows))),
                   bool(data.get("truncated", False)))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` (needs pandas: ``pip install code-gateway-client[pandas]``)."""
        try:
            pandas = importlib.import_module("pandas")
        except ImportError:
            raise ImportError("Table.to_pandas() needs pandas: pip install 'code-gateway-client[pandas]'") from None
        frame = pandas.DataFrame(self.rows, columns=self.columns, index=self.index or None)
        for column, dtype in zip(self.columns, self.dtypes):
            try:
                frame[column] = frame[column].astype(dtype)
            except (TypeError, ValueError):
                pass  # a dtype that does not survive JSON (objects, categories): keep what JSON gave
        return frame

    def to_csv(self) -> str:
        """The rows as CSV text (index first), for showing a table to a language model."""
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["", *self.columns])
        for label, row in zip(self.index or range(len(self.rows)), self.rows):
            writer.writerow([label, *row])
        return out.getvalue()


def table_in(data: dict[str, Any]) -> Table | None:
    """The table of a MIME bundle: the vendor type, or the older ``application/json`` of the same shape."""
    value = data.get(TABLE_MIME)
    if isinstance(value, dict):
        return Table.from_json(value)
    value = data.get(LEGACY_TABLE_MIME)
    if isinstance(value, dict) and TABLE_KEYS <= value.keys():
        return Table.from_json(value)
    return None


def images_in(data: dict[str, Any]) -> list[Image]:
    found = []
    for mime in IMAGE_MIMES:
        value = data.get(mime)
        if value is None:
            continue
        text = "".join(value) if isinstance(value, list) else str(value)
        found.append(Image(mime, text.encode() if mime == "image/svg+xml" else base64.b64decode(text)))
    return found


@dataclasses.dataclass
class Execution:
    """One run of code: its status, its nbformat outputs in order, and their summaries."""

    id: str
    sandbox_id: str
    code: str
    status: str
    outputs: list[dict[str, Any]]
    stdout: str
    stderr: str
    #: The MIME bundle of the last expression's value (``execute_result``), or None.
    result: dict[str, Any] | None
    error: ErrorInfo | None
    execution_count: int | None
    truncated: bool
    duration_ms: float | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Execution:
        outputs = list(data.get("outputs") or [])
        return cls(
            id=str(data.get("id", "")), sandbox_id=str(data.get("sandbox_id", "")), code=str(data.get("code", "")),
            status=str(data.get("status", "")), outputs=outputs,
            stdout=data.get("stdout", stream_text(outputs, "stdout")),
            stderr=data.get("stderr", stream_text(outputs, "stderr")),
            result=data.get("result"), error=ErrorInfo.from_json(data["error"]) if data.get("error") else None,
            execution_count=data.get("execution_count"), truncated=bool(data.get("truncated", False)),
            duration_ms=data.get("duration_ms"), raw=data,
        )

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def text(self) -> str | None:
        """The result's ``text/plain``, if there is a result."""
        return None if self.result is None else plain(self.result)

    def raise_for_error(self) -> Execution:
        """Raise ``ExecutionError`` unless the execution completed; else return it."""
        if not self.ok:
            raise ExecutionError(self)
        return self

    def bundles(self) -> list[dict[str, Any]]:
        """The MIME bundles of the rich outputs (``display_data`` and ``execute_result``), in order."""
        return [o.get("data") or {} for o in self.outputs if o.get("output_type") in ("display_data", "execute_result")]

    def images(self) -> list[Image]:
        """Every image output, in order (PNG, JPEG and GIF decoded to bytes; SVG as UTF-8 bytes)."""
        return [image for data in self.bundles() for image in images_in(data)]

    def tables(self) -> list[Table]:
        """Every DataFrame/Series output in its JSON table form, in order."""
        return [table for data in self.bundles() if (table := table_in(data)) is not None]


def stream_text(outputs: list[dict[str, Any]], name: str) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == name)


def plain(data: dict[str, Any]) -> str:
    value = data.get("text/plain", "")
    return "".join(value) if isinstance(value, list) else str(value)


@dataclasses.dataclass(frozen=True)
class SandboxInfo:
    id: str
    owner: str
    status: str
    status_reason: str | None
    image: str | None
    resources: dict[str, Any]
    metadata: dict[str, Any]
    created_at: str | None
    execution_count: int
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(str(data["id"]), str(data.get("owner", "")), str(data.get("status", "")), data.get("status_reason"),
                   data.get("image"), dict(data.get("resources") or {}), dict(data.get("metadata") or {}),
                   data.get("created_at"), int(data.get("execution_count") or 0), data)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: str
    size: int
    modified: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(str(data.get("name", "")), str(data.get("path", "")), str(data.get("type", "file")),
                   int(data.get("size") or 0), data.get("modified"))
