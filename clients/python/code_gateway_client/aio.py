"""The asyncio SDK: ``AsyncGateway`` → ``AsyncSandbox`` (run, interrupt, files, notebook, history).

    async with AsyncGateway(url, api_key) as gateway:
        async with await gateway.create_sandbox() as sandbox:      # deleted on exit
            execution = await sandbox.run("import sys; print(sys.version)", on_stdout=print)
            await sandbox.files.upload("data.csv", "local.csv", on_progress=print)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, overload
from urllib.parse import quote

import anyio
import httpx

from code_gateway_client.connection import Connection
from code_gateway_client.models import Execution, FileEntry, SandboxInfo
from code_gateway_client.retry import RetryPolicy
from code_gateway_client.runs import Callback, Callbacks, follow_run

CHUNK = 1 << 20
#: ``on_progress(done_bytes, total_bytes_or_None)``.
Progress = Callable[[int, int | None], Any]
Source = bytes | str | os.PathLike[str] | IO[bytes]
Destination = str | os.PathLike[str] | IO[bytes]
V1 = "/api/v1"
#: Sandboxes asked for per page when listing (the gateway allows up to 1000).
PAGE = 500


class AsyncGateway:
    """A gateway reached at ``url`` with ``api_key`` (defaults: ``CODE_GATEWAY_URL``, ``CODE_GATEWAY_API_KEY``)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 stream_timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.connection = Connection(url, api_key, timeout=timeout, stream_timeout=stream_timeout, retry=retry,
                                     transport=transport)

    @property
    def url(self) -> str:
        return self.connection.url

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.connection.aclose()

    async def create_sandbox(self, *, delete_on_exit: bool = True, **options: Any) -> AsyncSandbox:
        """A new sandbox; ``options`` are the create body (``resources``, ``timeout``, ``env``, ``metadata``, ...)."""
        data = await self.connection.json("POST", f"{V1}/sandboxes", json=options)
        return AsyncSandbox(self, SandboxInfo.from_json(data), delete_on_exit=delete_on_exit)

    async def sandboxes(self, *, status: str | list[str] | None = None) -> list[AsyncSandbox]:
        """All your sandboxes (every page of the paged listing), oldest first."""
        found: list[AsyncSandbox] = []
        while True:
            params: dict[str, Any] = {"limit": PAGE, "offset": len(found)}
            if status:
                params["status"] = status
            data = await self.connection.json("GET", f"{V1}/sandboxes", params=params)
            page = data["sandboxes"]
            found += [AsyncSandbox(self, SandboxInfo.from_json(s), delete_on_exit=False) for s in page]
            # A gateway without paging answers without a total: one page is all there is.
            if not page or len(found) >= data.get("total", len(found)):
                return found

    async def sandbox(self, sandbox_id: str, *, delete_on_exit: bool = False) -> AsyncSandbox:
        """An existing sandbox (``APIError`` with code ``sandbox_not_found`` if it is not yours)."""
        data = await self.connection.json("GET", f"{V1}/sandboxes/{quote(sandbox_id, safe='')}")
        return AsyncSandbox(self, SandboxInfo.from_json(data), delete_on_exit=delete_on_exit)

    async def execution(self, execution_id: str) -> Execution:
        return Execution.from_json(await self.connection.json("GET", f"{V1}/executions/{quote(execution_id, safe='')}"))


class AsyncSandbox:
    def __init__(self, gateway: AsyncGateway, info: SandboxInfo, *, delete_on_exit: bool = True) -> None:
        self.gateway = gateway
        self.info = info
        #: Whether leaving ``async with`` deletes the sandbox.
        self.delete_on_exit = delete_on_exit
        self.files = AsyncFiles(self)
        from code_gateway_client.tools import AsyncTools

        self.tools = AsyncTools(self)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def path(self) -> str:
        return f"{V1}/sandboxes/{quote(self.id, safe='')}"

    @property
    def connection(self) -> Connection:
        return self.gateway.connection

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} {self.info.status}>"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.delete_on_exit:
            await self.delete()

    async def _update(self, method: str, suffix: str = "") -> SandboxInfo:
        self.info = SandboxInfo.from_json(await self.connection.json(method, self.path + suffix))
        return self.info

    async def refresh(self) -> SandboxInfo:
        return await self._update("GET")

    async def run(self, code: str, *, timeout: float | None = None, on_stdout: Callback | None = None,
                  on_stderr: Callback | None = None, on_output: Callback | None = None,
                  on_result: Callback | None = None, raise_on_error: bool = False) -> Execution:
        """Run ``code`` and return its Execution, streaming its output to the callbacks as it comes.

        A dropped connection re-attaches to the same execution; nothing is lost. With
        ``raise_on_error``, an execution that did not complete raises ``ExecutionError``.
        """
        body: dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout"] = timeout
        callbacks = Callbacks(on_stdout, on_stderr, on_output, on_result)
        execution = await follow_run(self.connection, self.id, body, callbacks)
        return execution.raise_for_error() if raise_on_error else execution

    async def interrupt(self) -> SandboxInfo:
        return await self._update("POST", "/interrupt")

    async def restart(self) -> SandboxInfo:
        return await self._update("POST", "/restart")

    async def pause(self) -> SandboxInfo:
        """Keep the files and the kernel's variables on the gateway's disk and stop the container."""
        return await self._update("POST", "/pause")

    async def resume(self) -> SandboxInfo:
        return await self._update("POST", "/resume")

    async def delete(self) -> None:
        await self.connection.request("DELETE", self.path)

    async def executions(self, *, limit: int = 100, offset: int = 0) -> list[Execution]:
        data = await self.connection.json("GET", f"{self.path}/executions", params={"limit": limit, "offset": offset})
        return [Execution.from_json(e) for e in data["executions"]]

    async def notebook(self) -> Any:
        """The history as a notebook: an ``nbformat.NotebookNode`` if nbformat is installed, else a dict."""
        data = await self.connection.json("GET", f"{self.path}/notebook")
        try:
            nbformat = importlib.import_module("nbformat")
        except ImportError:
            return data
        return nbformat.from_dict(data)


class AsyncFiles:
    """Files in the sandbox's working directory, streamed both ways."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self.sandbox = sandbox

    def _path(self, path: str) -> str:
        return f"{self.sandbox.path}/files/{quote(path.lstrip('/'), safe='/')}"

    async def upload(self, path: str, source: Source, *, on_progress: Progress | None = None) -> FileEntry:
        """Write ``source`` (bytes, a local file's path, or a binary file object) to ``path`` in the sandbox."""
        if isinstance(source, bytes):
            total: int | None = len(source)
        elif isinstance(source, (str, os.PathLike)):
            total = os.path.getsize(source)
        else:
            total = file_size(source)
        headers = {"Content-Length": str(total)} if total is not None else {}

        def content() -> AsyncIterator[bytes]:
            return read_chunks(source, total, on_progress)

        data = await self.sandbox.connection.json("PUT", self._path(path), content=content, headers=headers)
        return FileEntry.from_json(data)

    @overload
    async def download(self, path: str, dest: None = None, *, on_progress: Progress | None = None) -> bytes: ...

    @overload
    async def download(self, path: str, dest: Destination, *, on_progress: Progress | None = None) -> int: ...

    async def download(self, path: str, dest: Destination | None = None, *,
                       on_progress: Progress | None = None) -> bytes | int:
        """The file's bytes; with ``dest`` (a local path or binary file object) written there, returning its size."""
        chunks: list[bytes] = []
        async with self.sandbox.connection.stream("GET", self._path(path)) as response:
            total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
            with open_destination(dest) as out:
                done = 0
                async for chunk in response.aiter_bytes(CHUNK):
                    if out is None:
                        chunks.append(chunk)
                    else:
                        await anyio.to_thread.run_sync(out.write, chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        return b"".join(chunks) if dest is None else done

    async def list(self, path: str = "") -> list[FileEntry]:
        data = await self.sandbox.connection.json("GET", f"{self.sandbox.path}/files", params={"path": path})
        return [FileEntry.from_json(e) for e in data["entries"]]

    async def delete(self, path: str) -> None:
        await self.sandbox.connection.request("DELETE", self._path(path))


def file_size(file: IO[bytes]) -> int | None:
    """Bytes left in a seekable file object, else None (the upload is then sent chunked)."""
    try:
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return end - here
    except (OSError, ValueError, AttributeError):
        return None


async def read_chunks(source: Source, total: int | None, on_progress: Progress | None) -> AsyncIterator[bytes]:
    """The upload body in chunks, reporting progress; a file read never blocks the event loop."""
    done = 0
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK):
            chunk = source[start:start + CHUNK]
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
            yield chunk
        if not source and on_progress is not None:
            on_progress(0, 0)
        return
    opened = isinstance(source, (str, os.PathLike))
    file: IO[bytes] = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    try:
        while chunk := await anyio.to_thread.run_sync(file.read, CHUNK):
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
            yield chunk
    finally:
        if opened:
            file.close()


class open_destination:
    """A download's target opened for writing (None: kept in memory); a failed download leaves no partial file."""

    def __init__(self, dest: Destination | None) -> None:
        self.dest = dest
        self.file: IO[bytes] | None = None
        self.temporary = ""

    def __enter__(self) -> IO[bytes] | None:
        if isinstance(self.dest, (str, os.PathLike)):
            self.temporary = f"{os.fspath(self.dest)}.part"
            self.file = open(self.temporary, "wb")
            return self.file
        return self.dest

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.file is None:
            return
        self.file.close()
        if exc_type is None:
            os.replace(self.temporary, os.fspath(self.dest))  # type: ignore[arg-type]
        else:
            os.unlink(self.temporary)
