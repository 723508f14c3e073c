"""Files in a sandbox's working directory: upload, download, list, delete.

    files = SandboxFiles(sandboxes=manager, commands=SandboxCommands(launcher), parent=app)
    entries = await files.list(sandbox_id, "alice", "data")
    upload = await files.open_upload(sandbox_id, "alice", "data/in.csv")
    await upload.write(chunk); entry = await upload.finish()
    download = await files.open_download(sandbox_id, "alice", "out.png")
    async for chunk in download.chunks(): ...
    await download.close()

Every operation runs ``kernels/tools/sandbox_files.py`` inside the sandbox (see ``commands``),
which resolves paths and symlinks in the sandbox's own view and refuses any that leave its
working directory. Paths are also checked here first, so obvious escapes never start a tool.
Ownership is the manager's: someone else's sandbox is ``SandboxNotFound``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

from traitlets import Int
from traitlets.config import LoggingConfigurable

from gateway.errors import (
    FileNotFound,
    FileTooLarge,
    GatewayError,
    InvalidPath,
    InvalidRequest,
    SandboxDiskFull,
    SandboxNotRunning,
)
from gateway.sandboxes.commands import SandboxCommands, SandboxProcess
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import Sandbox, SandboxStatus

log = logging.getLogger(__name__)

TOOL = "sandbox_files.py"
CHUNK = 1 << 16
END_OF_FILE = struct.pack(">I", 0)


class FileOperationFailed(GatewayError):
    status = 500
    code = "file_operation_failed"


def check_path(path: str, *, allow_root: bool = False) -> str:
    """``path`` as the tool will take it; refuses escapes (``..``, absolute, NUL) at once."""
    if "\x00" in path:
        raise InvalidPath("the path contains a NUL byte")
    if path.startswith(("/", "\\")):
        raise InvalidPath("the path must be relative to the sandbox's working directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPath("the path must not contain '..'")
    if not parts and not allow_root:
        raise InvalidPath("a file path is required")
    return "/".join(parts)


def refusal(answer: dict[str, Any]) -> GatewayError:
    """The typed error for the tool's ``{"ok": false, "error": ..., "message": ...}``."""
    code, message = answer.get("error"), str(answer.get("message") or "the file operation failed")
    if code == "invalid_path":
        return InvalidPath(message)
    if code == "file_not_found":
        return FileNotFound(message)
    if code == "too_large":
        return FileTooLarge(message)
    if code == "disk_full":
        return SandboxDiskFull(message)
    if code == "bad_request":
        return InvalidRequest(message)
    return FileOperationFailed(message)


class SandboxFiles(LoggingConfigurable):
    max_file_bytes = Int(
        100 << 20, help="Largest file that may be uploaded to or downloaded from a sandbox, in bytes."
    ).tag(config=True)

    def __init__(self, *, sandboxes: SandboxManager, commands: SandboxCommands, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sandboxes = sandboxes
        self.commands = commands
        self._tasks: set[asyncio.Task[None]] = set()

    def abandon(self, upload: Upload) -> None:
        """Abort an upload whose client went away, in the background (``stop`` awaits it)."""
        task = asyncio.create_task(upload.abort(), name=f"abandon-upload-{upload.sandbox.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _start(self, sandbox_id: str, user: str,
                     request: dict[str, Any]) -> tuple[Sandbox, SandboxProcess]:
        sandbox = await self.sandboxes.ready(sandbox_id, user)  # a paused sandbox resumes first
        if sandbox.status != SandboxStatus.RUNNING:
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} is {sandbox.status}: its files are reachable only while it runs"
            )
        process = await self.commands.start(sandbox, TOOL)
        sandbox.touch()
        if not await process.write(json.dumps(request).encode() + b"\n"):
            await process.close()
            raise FileOperationFailed("the file tool in the sandbox did not start")
        return sandbox, process

    @staticmethod
    async def _answer(process: SandboxProcess, sandbox: Sandbox) -> dict[str, Any]:
        line = await process.readline()
        try:
            answer = json.loads(line)
        except ValueError:
            log.warning("sandbox %s: the file tool gave no answer (stderr: %s)",
                        sandbox.id, process.stderr()[-500:])
            raise FileOperationFailed("the file tool in the sandbox failed") from None
        if not answer.get("ok"):
            raise refusal(answer)
        ok: dict[str, Any] = answer
        return ok

    async def _run(self, sandbox_id: str, user: str, request: dict[str, Any]) -> dict[str, Any]:
        sandbox, process = await self._start(sandbox_id, user, request)
        try:
            await process.close_stdin()
            return await self._answer(process, sandbox)
        finally:
            await process.close()

    async def list(self, sandbox_id: str, user: str, path: str = "") -> dict[str, Any]:
        """``{"path", "entries": [{name, path, type, size, modified}], "truncated"}`` of a directory."""
        answer = await self._run(sandbox_id, user, {"op": "list", "path": check_path(path, allow_root=True)})
        return {"path": answer["path"], "entries": answer["entries"], "truncated": answer["truncated"]}

    async def list_deep(self, sandbox_id: str, user: str, path: str = "", depth: int = 1) -> dict[str, Any]:
        """Like ``list`` down to ``depth`` levels, each entry with all the tool tells (mode, owner, ...)."""
        return await self._run(sandbox_id, user, {"op": "list", "path": check_path(path, allow_root=True),
                                                  "depth": depth})

    async def stat(self, sandbox_id: str, user: str, path: str) -> dict[str, Any]:
        """The entry of a file, directory or symlink (not followed), with mode, permissions, owner, group."""
        return await self._run(sandbox_id, user, {"op": "stat", "path": check_path(path, allow_root=True)})

    async def make_dir(self, sandbox_id: str, user: str, path: str) -> dict[str, Any]:
        """Make a directory and its parents; ``created`` is false if it was there already."""
        return await self._run(sandbox_id, user, {"op": "mkdir", "path": check_path(path)})

    async def move(self, sandbox_id: str, user: str, path: str, destination: str) -> dict[str, Any]:
        """Rename ``path`` to ``destination`` (its parents are made); the moved entry."""
        return await self._run(sandbox_id, user, {"op": "move", "path": check_path(path),
                                                  "destination": check_path(destination)})

    async def delete(self, sandbox_id: str, user: str, path: str) -> dict[str, Any]:
        """Remove a file, symlink or directory (with its contents); returns what was removed."""
        answer = await self._run(sandbox_id, user, {"op": "delete", "path": check_path(path)})
        return entry_of(answer)

    async def open_download(self, sandbox_id: str, user: str, path: str) -> Download:
        request = {"op": "read", "path": check_path(path), "max_bytes": self.max_file_bytes}
        sandbox, process = await self._start(sandbox_id, user, request)
        try:
            await process.close_stdin()
            answer = await self._answer(process, sandbox)
        except BaseException:
            await process.close()
            raise
        return Download(entry_of(answer), process)

    async def open_upload(self, sandbox_id: str, user: str, path: str) -> Upload:
        request = {"op": "write", "path": check_path(path), "max_bytes": self.max_file_bytes}
        sandbox, process = await self._start(sandbox_id, user, request)
        return Upload(sandbox, process, self.max_file_bytes)


def entry_of(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in ("name", "path", "type", "size", "modified") if key in answer}


class Download:
    """A file being read out of a sandbox: its entry (``size``...), then its bytes."""

    def __init__(self, entry: dict[str, Any], process: SandboxProcess) -> None:
        self.entry = entry
        self.size: int = entry["size"]
        self.process = process

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes; raises if the sandbox delivered fewer than ``size``."""
        left = self.size
        while left > 0:
            chunk = await self.process.read(min(CHUNK, left))
            if not chunk:
                raise FileOperationFailed(
                    f"the file ended {left} bytes early (was it changed while being read?)"
                )
            left -= len(chunk)
            yield chunk

    async def close(self) -> None:
        await self.process.close()


class Upload:
    """A file being written into a sandbox, piece by piece; ``finish`` says how it went.

    Pieces go to the tool in length-prefixed frames ended by an empty one, so a tool whose
    input ends early (``abort``: the client went away) writes nothing.
    """

    def __init__(self, sandbox: Sandbox, process: SandboxProcess, max_bytes: int) -> None:
        self.sandbox = sandbox
        self.process = process
        self.max_bytes = max_bytes
        self.received = 0
        self._accepting = True

    async def write(self, chunk: bytes) -> None:
        if not chunk or not self._accepting:
            return  # the tool refused and stopped reading; ``finish`` reports why
        self.received += len(chunk)
        if not await self.process.write(struct.pack(">I", len(chunk)) + chunk):
            self._accepting = False
        if self.received > self.max_bytes:
            self._accepting = False  # the tool saw more than its limit: it refuses and cleans up

    async def finish(self) -> dict[str, Any]:
        """The stored file's entry plus ``created``; raises the tool's refusal."""
        try:
            if self._accepting:
                await self.process.write(END_OF_FILE)
            await self.process.close_stdin()
            answer = await SandboxFiles._answer(self.process, self.sandbox)
            return {**entry_of(answer), "created": bool(answer.get("created"))}
        finally:
            await self.process.close()

    async def abort(self) -> None:
        """Give up: the tool sees its input end early and removes what it wrote."""
        try:
            await self.process.close_stdin()
            await asyncio.wait_for(self.process.readline(), 10)
        except Exception:
            pass
        finally:
            await self.process.close()
