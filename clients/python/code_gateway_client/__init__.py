"""Code Interpreter Gateway's Python SDK: sandboxes that run code and keep state, over the public API.

    from code_gateway_client import Gateway

    with Gateway("http://127.0.0.1:8888", "KEY") as gateway, gateway.create_sandbox() as sandbox:
        sandbox.run("x = 41")
        print(sandbox.run("x + 1", on_stdout=print).text)      # 42

``AsyncGateway`` is the same with ``async``/``await``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from code_gateway_client.aio import AsyncFiles, AsyncGateway, AsyncSandbox  # noqa: E402
from code_gateway_client.errors import APIError, ConnectionLost, ExecutionError, GatewayError  # noqa: E402
from code_gateway_client.models import (  # noqa: E402
    ErrorInfo,
    Execution,
    FileEntry,
    Image,
    SandboxInfo,
    Table,
)
from code_gateway_client.retry import RetryPolicy  # noqa: E402
from code_gateway_client.sync import Files, Gateway, Sandbox  # noqa: E402

__all__ = [
    "APIError", "AsyncFiles", "AsyncGateway", "AsyncSandbox", "ConnectionLost", "ErrorInfo", "Execution",
    "ExecutionError", "FileEntry", "Files", "Gateway", "GatewayError", "Image", "RetryPolicy", "Sandbox",
    "SandboxInfo", "Table",
]
