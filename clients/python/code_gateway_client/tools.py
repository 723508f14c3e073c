"""Tool definitions for LLM APIs, run in one sandbox: ``run_code`` and the file tools.

    tools = sandbox.tools
    response = openai_client.chat.completions.create(model=..., messages=messages, tools=tools.openai())
    for call in response.choices[0].message.tool_calls or []:
        messages += tools.handle(call).openai()            # a tool message (+ a user message with images)

    response = anthropic_client.messages.create(model=..., messages=messages, tools=tools.anthropic())
    results = [tools.handle(block).anthropic() for block in response.content if block.type == "tool_use"]

``handle`` takes a call as those SDKs return it (objects or dicts) and gives a ``ToolResult``:
text (stdout, the value, the error with its traceback, tables as CSV) plus the images.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

from code_gateway_client.errors import APIError
from code_gateway_client.models import Execution, Image, plain, table_in

if TYPE_CHECKING:
    from code_gateway_client.aio import AsyncSandbox
    from code_gateway_client.sync import Gateway

#: name -> (description, JSON schema of the arguments)
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "run_code": (
        "Run Python code in a stateful Jupyter sandbox (variables, imports and files persist between calls). "
        "Returns stdout, stderr, the value of the last expression, errors with tracebacks, tables as CSV and "
        "plots as images (matplotlib figures are shown automatically).",
        {"type": "object", "properties": {
            "code": {"type": "string", "description": "Python source to run"},
            "timeout": {"type": "number", "description": "seconds before the run is interrupted"}},
         "required": ["code"], "additionalProperties": False},
    ),
    "list_files": (
        "List a directory of the sandbox's working directory (default: the working directory itself).",
        {"type": "object", "properties": {"path": {"type": "string", "description": "directory, relative"}},
         "additionalProperties": False},
    ),
    "read_file": (
        "Read a file from the sandbox's working directory: text as text, images as images.",
        {"type": "object", "properties": {"path": {"type": "string", "description": "file path, relative"}},
         "required": ["path"], "additionalProperties": False},
    ),
    "write_file": (
        "Write a text file into the sandbox's working directory (parent directories are created).",
        {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
         "required": ["path", "content"], "additionalProperties": False},
    ),
}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_TEXT = 50_000


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def describe(execution: Execution) -> str:
    """An execution as text for a language model: streams, values, tables as CSV, the error, the status."""
    parts: list[str] = []
    for output in execution.outputs:
        kind = output.get("output_type")
        if kind == "stream":
            text = output.get("text", "")
            parts.append(text if output.get("name") == "stdout" else f"[stderr]\n{text}")
        elif kind in ("display_data", "execute_result"):
            data = output.get("data") or {}
            table = table_in(data)
            if table is not None:
                more = f" (first {len(table.rows)} of {table.row_count} rows)" if table.truncated else ""
                parts.append(f"[table{more}]\n{table.to_csv()}")
            elif any(m.startswith("image/") for m in data):
                parts.append(f"[image: {', '.join(m for m in data if m.startswith('image/'))}]")
            elif "text/markdown" in data:
                parts.append(str(data["text/markdown"]))
            else:
                parts.append(plain(data))
        elif kind == "error":
            lines = output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"]
            parts.append(strip_ansi("\n".join(lines)))
    if execution.error is not None and execution.error.code != "exception":
        parts.append(f"[{execution.status}: {execution.error.code}] {execution.error.evalue}")
    elif execution.status not in ("completed", "failed"):
        parts.append(f"[{execution.status}]")
    if execution.truncated:
        parts.append("[output truncated by the gateway]")
    text = "\n".join(p.rstrip("\n") for p in parts if p) or "(no output)"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} more characters]"


@dataclasses.dataclass
class ToolCall:
    """A call as an LLM API gives it, in a neutral form."""

    id: str
    name: str
    arguments: dict[str, Any]
    api: str  # "openai" | "anthropic"

    @classmethod
    def parse(cls, call: Any) -> ToolCall:
        if field(call, "type") == "tool_use" or field(call, "input") is not None:  # Anthropic
            return cls(str(field(call, "id") or ""), str(field(call, "name")), dict(field(call, "input") or {}),
                       "anthropic")
        function = field(call, "function")
        if function is not None:  # OpenAI chat completions
            name, arguments, call_id = field(function, "name"), field(function, "arguments"), field(call, "id")
        else:  # OpenAI responses: {"type": "function_call", "call_id", "name", "arguments"}
            name, arguments, call_id = field(call, "name"), field(call, "arguments"), field(call, "call_id")
        if isinstance(arguments, str):
            arguments = json.loads(arguments or "{}")
        return cls(str(call_id or ""), str(name), dict(arguments or {}), "openai")


def field(value: Any, key: str) -> Any:
    """``value[key]`` of a dict, else the attribute (the LLM SDKs give objects, their JSON gives dicts)."""
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


@dataclasses.dataclass
class ToolResult:
    call_id: str
    text: str
    images: list[Image] = dataclasses.field(default_factory=list)
    is_error: bool = False

    def anthropic(self) -> dict[str, Any]:
        """A ``tool_result`` content block (text, then each PNG/JPEG/GIF as a base64 image)."""
        content: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
        content += [{"type": "image", "source": {"type": "base64", "media_type": image.mime,
                                                 "data": base64.b64encode(image.data).decode()}}
                    for image in self.images if image.mime != "image/svg+xml"]
        return {"type": "tool_result", "tool_use_id": self.call_id, "content": content, "is_error": self.is_error}

    def openai(self) -> list[dict[str, Any]]:
        """Chat messages: the ``tool`` message, then (tool messages carry text only) a user message with the images."""
        messages: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": self.call_id, "content": self.text}]
        shown = [image for image in self.images if image.mime != "image/svg+xml"]
        if shown:
            parts: list[dict[str, Any]] = [{"type": "text", "text": f"Images produced by tool call {self.call_id}:"}]
            parts += [{"type": "image_url", "image_url": {
                "url": f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"}} for image in shown]
            messages.append({"role": "user", "content": parts})
        return messages


def openai_definitions() -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": name, "description": description, "parameters": schema}}
            for name, (description, schema) in TOOLS.items()]


def anthropic_definitions() -> list[dict[str, Any]]:
    return [{"name": name, "description": description, "input_schema": schema}
            for name, (description, schema) in TOOLS.items()]


class AsyncTools:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self.sandbox = sandbox

    def openai(self) -> list[dict[str, Any]]:
        return openai_definitions()

    def anthropic(self) -> list[dict[str, Any]]:
        return anthropic_definitions()

    async def handle(self, call: Any) -> ToolResult:
        """Run one tool call in this sandbox; errors become an ``is_error`` result the model can read."""
        parsed = ToolCall.parse(call)
        try:
            return await self.run(parsed)
        except (APIError, KeyError, TypeError, ValueError) as error:
            return ToolResult(parsed.id, f"error: {error}", is_error=True)

    async def run(self, call: ToolCall) -> ToolResult:
        args = call.arguments
        if call.name == "run_code":
            execution = await self.sandbox.run(str(args["code"]), timeout=args.get("timeout"))
            return ToolResult(call.id, describe(execution), execution.images(), is_error=not execution.ok)
        if call.name == "list_files":
            entries = await self.sandbox.files.list(str(args.get("path", "")))
            listing = "\n".join(f"{e.type[0]} {e.size:>10} {e.path}" for e in entries)
            return ToolResult(call.id, listing or "(empty directory)")
        if call.name == "read_file":
            data = await self.sandbox.files.download(str(args["path"]))
            return file_result(call.id, str(args["path"]), data)
        if call.name == "write_file":
            entry = await self.sandbox.files.upload(str(args["path"]), str(args["content"]).encode())
            return ToolResult(call.id, f"wrote {entry.size} bytes to {entry.path}")
        return ToolResult(call.id, f"error: unknown tool {call.name!r}", is_error=True)


def file_result(call_id: str, path: str, data: bytes) -> ToolResult:
    for suffix, mime in ((".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"), (".gif", "image/gif")):
        if path.lower().endswith(suffix):
            return ToolResult(call_id, f"{path}: {len(data)} bytes, {mime}", [Image(mime, data)])
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return ToolResult(call_id, f"{path}: {len(data)} bytes of binary data (not shown)")
    return ToolResult(call_id, text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n[... truncated]")


class Tools:
    """The blocking twin of ``AsyncTools``."""

    def __init__(self, gateway: Gateway, aio: AsyncTools) -> None:
        self.gateway = gateway
        self.aio = aio

    def openai(self) -> list[dict[str, Any]]:
        return openai_definitions()

    def anthropic(self) -> list[dict[str, Any]]:
        return anthropic_definitions()

    def handle(self, call: Any) -> ToolResult:
        return self.gateway.call(self.aio.handle, call)
