"""The blocking SDK: ``Gateway`` → ``Sandbox``, the same API as ``aio`` without ``await``.

    with Gateway(url, api_key) as gateway, gateway.create_sandbox() as sandbox:
        sandbox.run("print('hi')", on_stdout=print)

Each ``Gateway`` runs the asyncio client on an event loop in a thread of its own (an anyio
blocking portal), so the two share every line of logic. Callbacks (``on_stdout``, progress)
are called on that thread, one at a time and in order.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast, overload

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from code_gateway_client.aio import AsyncFiles, AsyncGateway, AsyncSandbox, Destination, Progress, Source
from code_gateway_client.models import Execution, FileEntry, SandboxInfo
from code_gateway_client.retry import RetryPolicy
from code_gateway_client.runs import Callback

T = TypeVar("T")


class Gateway:
    """A gateway reached at ``url`` with ``api_key`` (defaults: ``CODE_GATEWAY_URL``, ``CODE_GATEWAY_API_KEY``)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 stream_timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._portal_context: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_context.__enter__()
        self.aio = AsyncGateway(url, api_key, timeout=timeout, stream_timeout=stream_timeout, retry=retry,
                                transport=transport)

    def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run one of the asyncio client's coroutine functions on this gateway's loop and wait for it."""
        return cast(T, self.portal.call(lambda: function(*args, **kwargs)))

    @property
    def url(self) -> str:
        return self.aio.url

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._portal_context is not None:
            self.call(self.aio.aclose)
            context, self._portal_context = self._portal_context, None  # type: ignore[assignment]
            context.__exit__(None, None, None)

    def create_sandbox(self, *, delete_on_exit: bool = True, **options: Any) -> Sandbox:
        return Sandbox(self, self.call(self.aio.create_sandbox, delete_on_exit=delete_on_exit, **options))

    def sandboxes(self, *, status: str | list[str] | None = None) -> list[Sandbox]:
        return [Sandbox(self, s) for s in self.call(self.aio.sandboxes, status=status)]

    def sandbox(self, sandbox_id: str, *, delete_on_exit: bool = False) -> Sandbox:
        return Sandbox(self, self.call(self.aio.sandbox, sandbox_id, delete_on_exit=delete_on_exit))

    def execution(self, execution_id: str) -> Execution:
        return self.call(self.aio.execution, execution_id)


class Sandbox:
    def __init__(self, gateway: Gateway, aio: AsyncSandbox) -> None:
        self.gateway = gateway
        self.aio = aio
        self.files = Files(gateway, aio.files)
        from code_gateway_client.tools import Tools

        self.tools = Tools(gateway, aio.tools)

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def info(self) -> SandboxInfo:
        return self.aio.info

    @property
    def delete_on_exit(self) -> bool:
        return self.aio.delete_on_exit

    @delete_on_exit.setter
    def delete_on_exit(self, value: bool) -> None:
        self.aio.delete_on_exit = value

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self.info.status}>"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.delete_on_exit:
            self.delete()

    def refresh(self) -> SandboxInfo:
        return self.gateway.call(self.aio.refresh)

    def run(self, code: str, *, timeout: float | None = None, on_stdout: Callback | None = None,
            on_stderr: Callback | None = None, on_output: Callback | None = None,
            on_result: Callback | None = None, raise_on_error: bool = False) -> Execution:
        """Run ``code``, streaming its output to the callbacks; see ``AsyncSandbox.run``."""
        return self.gateway.call(self.aio.run, code, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr,
                                 on_output=on_output, on_result=on_result, raise_on_error=raise_on_error)

    def interrupt(self) -> SandboxInfo:
        return self.gateway.call(self.aio.interrupt)

    def restart(self) -> SandboxInfo:
        return self.gateway.call(self.aio.restart)

    def pause(self) -> SandboxInfo:
        return self.gateway.call(self.aio.pause)

    def resume(self) -> SandboxInfo:
        return self.gateway.call(self.aio.resume)

    def delete(self) -> None:
        self.gateway.call(self.aio.delete)

    def executions(self, *, limit: int = 100, offset: int = 0) -> list[Execution]:
        return self.gateway.call(self.aio.executions, limit=limit, offset=offset)

    def notebook(self) -> Any:
        return self.gateway.call(self.aio.notebook)


class Files:
    def __init__(self, gateway: Gateway, aio: AsyncFiles) -> None:
        self.gateway = gateway
        self.aio = aio

    def upload(self, path: str, source: Source, *, on_progress: Progress | None = None) -> FileEntry:
        return self.gateway.call(self.aio.upload, path, source, on_progress=on_progress)

    @overload
    def download(self, path: str, dest: None = None, *, on_progress: Progress | None = None) -> bytes: ...

    @overload
    def download(self, path: str, dest: Destination, *, on_progress: Progress | None = None) -> int: ...

    def download(self, path: str, dest: Destination | None = None, *,
                 on_progress: Progress | None = None) -> bytes | int:
        return self.gateway.call(self.aio.download, path, dest, on_progress=on_progress)

    def list(self, path: str = "") -> list[FileEntry]:
        return self.gateway.call(self.aio.list, path)

    def delete(self, path: str) -> None:
        self.gateway.call(self.aio.delete, path)
