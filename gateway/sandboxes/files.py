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

The tool runs as the sandbox's own user, so code in the sandbox can stop it, kill it or trace it:
nothing it answers is trusted (every field is checked, sizes against ``max_file_bytes``), and what
goes wrong with it is the client's clear error, never a 500: a tool that stays silent for
``tool_timeout`` seconds is killed (504 ``file_operation_timeout``); one that dies or answers
nonsense is 502 ``file_operation_failed``; and if its sandbox stopped or was restarted meanwhile,
409 ``sandbox_not_running``. A request that arrives while the sandbox restarts waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from traitlets import Float, Int
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
from gateway.sandboxes.commands import SandboxCommands, SandboxProcess, ToolStalled
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import Sandbox, SandboxStatus
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

TOOL = "sandbox_files.py"
CHUNK = 1 << 16
END_OF_FILE = struct.pack(">I", 0)
#: Longest answer line read from the tool (a listing of its 10,000 entries fits).
MAX_ANSWER = 8 << 20
#: Most entries a listing may have (the tool's own limit).
MAX_ENTRIES = 10_000
ENTRY_TYPES = ("file", "directory", "symlink", "other")


class FileOperationFailed(GatewayError):
    """The sandbox's file tool died or gave an answer that makes no sense."""

    status = 502
    code = "file_operation_failed"


class FileOperationTimeout(GatewayError):
    """The sandbox's file tool stayed silent too long (it was killed)."""

    status = 504
    code = "file_operation_timeout"


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
    code, message = answer.get("error"), str(answer.get("message") or "the file operation failed")[:500]
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


def invalid(what: str) -> FileOperationFailed:
    return FileOperationFailed(f"the file tool in the sandbox gave an invalid answer ({what})")


def entry_of(answer: dict[str, Any], *, max_size: int | None = None) -> dict[str, Any]:
    """The entry an answer describes, each field checked (the tool is the sandbox's: never trusted)."""
    entry = {key: answer.get(key) for key in ("name", "path", "type", "size", "modified")}
    size = entry["size"]
    if not (isinstance(entry["name"], str) and isinstance(entry["path"], str) and isinstance(entry["modified"], str)
            and entry["type"] in ENTRY_TYPES
            and (size is None or (type(size) is int and 0 <= size <= (max_size if max_size is not None else size)))):
        raise invalid(f"entry {str(entry)[:200]}")
    return entry


def listing_of(answer: dict[str, Any]) -> dict[str, Any]:
    """The listing an answer describes, checked like ``entry_of`` (and at most ``MAX_ENTRIES`` of them)."""
    entries = answer.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES or not isinstance(answer.get("path"), str) \
            or not isinstance(answer.get("truncated"), bool) or not all(isinstance(e, dict) for e in entries):
        raise invalid("listing")
    return {"path": answer["path"], "entries": [entry_of(e) for e in entries], "truncated": answer["truncated"]}


class SandboxFiles(LoggingConfigurable):
    max_file_bytes = Int(
        100 << 20, help="Largest file that may be uploaded to or downloaded from a sandbox, in bytes."
    ).tag(config=True)
    tool_timeout = Float(
        30.0, help="Seconds a file operation waits for the sandbox's file tool (no byte either way) before the "
        "tool is killed and the request fails with 504 file_operation_timeout."
    ).tag(config=True)

    def __init__(self, *, sandboxes: SandboxManager, commands: SandboxCommands, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sandboxes = sandboxes
        self.commands = commands
        self._tasks: set[asyncio.Task[None]] = set()

    def abandon(self, upload: Upload) -> None:
        """Abort an upload whose client went away, in the background (``stop`` awaits it)."""
        self._in_background(upload.abort(), f"abandon-upload-{upload.sandbox.id}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await stop_tasks(list(self._tasks), within=10.0, what="file transfers")

    @contextlib.asynccontextmanager
    async def _talking(self, sandbox: Sandbox, process: SandboxProcess) -> AsyncIterator[None]:
        """What goes wrong with the tool inside the block, as the client's error (never a 500)."""
        try:
            yield
        except ToolStalled:
            log.warning("sandbox %s: the file tool was silent for %g s; killed it", sandbox.id, self.tool_timeout)
            if not await self._still_running(sandbox, process):
                raise self._gone(sandbox) from None
            raise FileOperationTimeout(
                f"the sandbox did not answer the file operation within {self.tool_timeout:g} s"
            ) from None
        except FileOperationFailed:
            if not await self._still_running(sandbox, process):
                raise self._gone(sandbox) from None
            log.warning("sandbox %s: the file tool failed (stderr: %s)", sandbox.id, process.stderr()[-500:])
            raise

    async def _still_running(self, sandbox: Sandbox, process: SandboxProcess) -> bool:
        """Whether the tool's sandbox still runs the container (or process) the tool ran in."""
        if self.sandboxes.locks.under_way(sandbox.id) is not None:
            return False
        try:
            return await process.alive()
        except Exception:
            log.warning("sandbox %s: could not tell whether it still runs", sandbox.id, exc_info=True)
            return False

    @staticmethod
    def _gone(sandbox: Sandbox) -> SandboxNotRunning:
        return SandboxNotRunning(
            f"sandbox {sandbox.id} stopped or was restarted during the file operation; try again once it runs"
        )

    async def _start(self, sandbox_id: str, user: str,
                     request: dict[str, Any]) -> tuple[Sandbox, SandboxProcess]:
        # A paused sandbox resumes first; a restart (or other lifecycle operation) under way is waited for.
        sandbox = await self.sandboxes.ready(sandbox_id, user)
        if sandbox.status != SandboxStatus.RUNNING:
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} is {sandbox.status}: its files are reachable only while it runs"
            )
        process = await self._launch(sandbox, request)
        sandbox.touch()
        return sandbox, process

    async def _launch(self, sandbox: Sandbox, request: dict[str, Any]) -> SandboxProcess:
        """The tool, started in the running sandbox and given ``request``."""
        process = await self.commands.start(sandbox, TOOL, timeout=self.tool_timeout)
        try:
            async with self._talking(sandbox, process):
                if not await process.write(json.dumps(request).encode() + b"\n"):
                    raise FileOperationFailed("the file tool in the sandbox did not start")
        except BaseException:
            await process.close()
            raise
        return process

    async def _answer(self, process: SandboxProcess) -> dict[str, Any]:
        """The tool's answer: an ``ok`` one, or its refusal raised as the matching error."""
        line = await process.readline(MAX_ANSWER)
        try:
            answer = json.loads(line)
        except ValueError:
            raise FileOperationFailed("the file tool in the sandbox gave no answer") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise invalid("not an answer")
        if not answer["ok"]:
            raise refusal(answer)
        return answer

    async def _run(self, sandbox_id: str, user: str, request: dict[str, Any]) -> dict[str, Any]:
        return await self._answered(*await self._start(sandbox_id, user, request))

    async def _answered(self, sandbox: Sandbox, process: SandboxProcess) -> dict[str, Any]:
        """The answer of a tool that has its request and needs no more input."""
        try:
            async with self._talking(sandbox, process):
                await process.close_stdin()
                return await self._answer(process)
        finally:
            await process.close()

    async def list(self, sandbox_id: str, user: str, path: str = "") -> dict[str, Any]:
        """``{"path", "entries": [{name, path, type, size, modified}], "truncated"}`` of a directory."""
        return listing_of(await self._run(sandbox_id, user, {"op": "list", "path": check_path(path, allow_root=True)}))

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
            async with self._talking(sandbox, process):
                await process.close_stdin()
                entry = entry_of(await self._answer(process), max_size=self.max_file_bytes)
                if entry["type"] != "file" or entry["size"] is None:
                    raise invalid("a download that is no file")
        except BaseException:
            await process.close()
            raise
        return Download(entry, process, self._talking(sandbox, process))

    async def open_upload(self, sandbox_id: str, user: str, path: str) -> Upload:
        token, path = secrets.token_hex(8), check_path(path)  # (the token names its temporary file: see discard)
        request = {"op": "write", "path": path, "max_bytes": self.max_file_bytes, "token": token}
        sandbox, process = await self._start(sandbox_id, user, request)
        return Upload(sandbox, process, self.max_file_bytes, self, path, token)

    async def discard(self, upload: Upload) -> None:
        """Remove the temporary file of an upload whose tool was killed (or died) before it could,
        if the sandbox still runs; the sandbox's code may stop this tool too (then it is killed
        after ``tool_timeout``, and the file stays). Never raises: it is tidying up."""
        sandbox = upload.sandbox
        try:
            if sandbox.status != SandboxStatus.RUNNING:
                return
            request = {"op": "discard", "path": upload.path, "token": upload.token}
            await self._answered(sandbox, await self._launch(sandbox, request))
        except Exception as exc:
            log.info("sandbox %s: the temporary file of a failed upload was not removed: %s", sandbox.id, exc)


class Download:
    """A file being read out of a sandbox: its entry (``size``...), then its bytes."""

    def __init__(self, entry: dict[str, Any], process: SandboxProcess,
                 talking: contextlib.AbstractAsyncContextManager[None]) -> None:
        self.entry = entry
        self.size: int = entry["size"]
        self.process = process
        self._talking = talking

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes (exactly ``size``, however many the tool sends); raises if it sends fewer."""
        left = self.size
        async with self._talking:
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

    def __init__(self, sandbox: Sandbox, process: SandboxProcess, max_bytes: int, files: SandboxFiles,
                 path: str, token: str) -> None:
        self.sandbox = sandbox
        self.process = process
        self.max_bytes = max_bytes
        self.files = files
        self.path = path
        #: What the tool's temporary file is named by.
        self.token = token
        self.received = 0
        self._accepting = True

    async def write(self, chunk: bytes) -> None:
        if not chunk or not self._accepting:
            return  # the tool refused and stopped reading; ``finish`` reports why
        self.received += len(chunk)
        async with self.files._talking(self.sandbox, self.process):
            if not await self.process.write(struct.pack(">I", len(chunk)) + chunk):
                self._accepting = False
        if self.received > self.max_bytes:
            self._accepting = False  # the tool saw more than its limit: it refuses and cleans up

    async def finish(self) -> dict[str, Any]:
        """The stored file's entry plus ``created``; raises the tool's refusal."""
        try:
            async with self.files._talking(self.sandbox, self.process):
                if self._accepting:
                    await self.process.write(END_OF_FILE)
                await self.process.close_stdin()
                answer = await self.files._answer(self.process)
                return {**entry_of(answer, max_size=self.max_bytes), "created": answer.get("created") is True}
        except BaseException:
            # (a tool that refused removed its file itself; one that died or was killed could not)
            self.files._in_background(self.files.discard(self), f"discard-upload-{self.sandbox.id}")
            raise
        finally:
            await self.process.close()

    async def abort(self) -> None:
        """Give up: the tool sees its input end early and removes what it wrote (and answers); a tool
        that cannot (killed for stalling, dead) leaves its temporary file to ``SandboxFiles.discard``."""
        answered = False
        try:
            await self.process.close_stdin()
            async with asyncio.timeout(10):
                answered = bool(await self.process.readline())
        except Exception:
            pass
        finally:
            await self.process.close()
        if not answered:
            await self.files.discard(self)
