"""What a paused sandbox keeps: its working directory and its kernel's variables, on the gateway's disk.

    snapshots = SandboxSnapshots(commands=commands, root=data_dir / "paused", kernels_dir=..., parent=app)
    manifest = await snapshots.save(sandbox, runtime)      # before the container goes
    report = await snapshots.restore(sandbox, runtime)     # into a fresh container: the ``restore`` report
    snapshots.remove(sandbox.id)

Everything is done inside the sandbox, by the sandbox's own user: ``kernels/tools/sandbox_snapshot.py``
packs and unpacks the working directory (a gzip-compressed tar) and moves the kernel's serialized
variables through a FIFO, while ``kernels/snapshot/variables.py`` runs in the kernel (silent code)
to serialize them with dill and load them back. The gateway only stores those bytes, under names it
chose (``<root>/<sandbox id>/files.tar.gz``, ``variables.dill.gz``, and ``state.json``: what the
kernel is given back, its modules and counter), opened without following links,
and counts them against the sandbox's ``disk_mb``: a paused sandbox never takes more of the host's
disk than it had. A save is written to ``<id>.partial`` and renamed when complete, so a crash leaves
no half-saved sandbox. Neither the archive nor the pickle is ever opened on the host.

The reports (the manifest a pause returns, the ``restore`` report) are kept in the sandbox's
record and shown with it, and a sandbox can make what they list any size: they are bounded
(``gateway.sandboxes.reports``: ``MAX_REPORT_CHARS`` each, ``truncated`` and ``omitted`` saying
what did not fit), which is why what the kernel needs again lives in ``state.json``, not in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from gateway import timestamps
from gateway.errors import GatewayError, SandboxDiskFull
from gateway.sandboxes.commands import SandboxCommands, SandboxProcess
from gateway.sandboxes.model import Sandbox
from gateway.sandboxes.reports import Budget, bounded, bounded_names

log = logging.getLogger(__name__)

TOOL = "sandbox_snapshot.py"
FILES = "files.tar.gz"
VARIABLES = "variables.dill.gz"
#: What the kernel is given back on resume (modules, variable names, execution count), in full.
STATE = "state.json"
CHUNK = 1 << 16
END = struct.pack(">I", 0)
#: What the kernel reports back after ``save``/``restore`` (``kernels/snapshot/variables.py``).
REPORT = {"report": "__import__('sys').modules['_code_gateway_state'].last"}
#: Longest trailer or answer line accepted from the tool.
MAX_LINE = 1 << 20


class SnapshotFailed(GatewayError):
    """Saving or restoring a sandbox's state failed; the sandbox is left as it was."""

    status = 500
    code = "snapshot_failed"


class SnapshotTooLarge(SandboxDiskFull):
    code = "snapshot_too_large"


class HostFile:
    """A file the gateway writes in a directory it made: created new, never through a link, bounded."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise SnapshotTooLarge(f"the sandbox's saved state is over its disk_mb ({self.limit >> 20} MiB)")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    async def close(self) -> None:
        """Close once durable (fsync in a worker thread): a paused sandbox must survive a power cut."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                await asyncio.get_running_loop().run_in_executor(None, os.fsync, fd)
            finally:
                os.close(fd)


class SandboxSnapshots(LoggingConfigurable):
    timeout = Float(
        300.0, help="Seconds the kernel may take to serialize or load its variables on pause and resume."
    ).tag(config=True)

    def __init__(self, *, commands: SandboxCommands, root: str | os.PathLike[str], kernels_dir: str,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = commands
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.source = (Path(kernels_dir) / "snapshot" / "variables.py").read_text()

    # -- the host's side -------------------------------------------------------------------------

    def directory(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def exists(self, sandbox_id: str) -> bool:
        return self.directory(sandbox_id).is_dir()

    def remove(self, sandbox_id: str) -> None:
        for path in (self.directory(sandbox_id), self.root / f"{sandbox_id}.partial"):
            shutil.rmtree(path, ignore_errors=True)

    def entries(self) -> list[str]:
        """The names under the root: sandbox ids (saved states) and ``<id>.partial`` (states being saved)."""
        return [entry.name for entry in self.root.iterdir()]

    def remove_entry(self, name: str) -> None:
        entry = self.root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """What all saved states take on the host's disk."""
        return sum(f.stat().st_size for f in self.root.glob("*/*") if f.is_file())

    # -- pause -----------------------------------------------------------------------------------

    async def save(self, sandbox: Sandbox, runtime: Any, unkept: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Save the sandbox's files and variables; the manifest for its record (bounded; ``unkept``:
        what the caller knows is lost besides, listed last). Raises, leaving nothing, on failure."""
        partial = self.root / f"{sandbox.id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        budget = int(sandbox.resources.disk_mb) << 20
        try:
            files = HostFile(partial / FILES, budget)
            try:
                packed = await self._pack(sandbox, files)
            finally:
                await files.close()
            variables = await self._save_variables(sandbox, runtime, partial, budget - files.size)
            state = HostFile(partial / STATE, budget - files.size - variables["stored"])
            try:
                state.write(json.dumps({key: variables[key] for key in RESTORED}).encode())
            finally:
                await state.close()
            final = self.directory(sandbox.id)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        report = Budget()
        report.omit("lost", _count(packed.get("skipped_more")) or 0)  # (files the tool only counted)
        lost = [*_listed(packed.get("skipped")), *_listed(variables["lost"]), *(unkept or [])]
        return {
            "files": _count(packed.get("files")),
            "bytes": files.size + variables["stored"] + state.size,
            "lost": bounded(lost, report, "lost"),
            "modules": bounded_names(variables["modules"], report, "modules"),
            "variables": bounded(variables["variables"], report, "variables"),
            "execution_count": variables["execution_count"],
            "at": timestamps.to_iso(timestamps.now()),
            **report.summary(),
        }

    async def _pack(self, sandbox: Sandbox, sink: HostFile) -> dict[str, Any]:
        async with self._tool(sandbox, "pack") as process:
            await process.close_stdin()
            await self._answer(process)
            async for chunk in _frames(process):
                sink.write(chunk)
            return await self._answer(process)

    async def _save_variables(self, sandbox: Sandbox, runtime: Any, directory: Path, budget: int) -> dict[str, Any]:
        """Serialize the kernel's variables into ``directory``; what was kept, re-imported and lost."""
        plan = await self._in_kernel(runtime, f"plan({max(budget, 0)})")
        modules = plan.get("modules")
        kept: dict[str, Any] = {
            # (only names: the kernel's report is the sandbox's, and this is given back to it)
            "variables": [name for name in _listed(plan.get("variables")) if isinstance(name, str)],
            "modules": {alias: name for alias, name in (modules.items() if isinstance(modules, dict) else ())
                        if isinstance(name, str)},
            "lost": _listed(plan.get("lost")), "execution_count": _count(plan.get("execution_count"), None),
            "stored": 0,
        }
        if not kept["variables"]:
            return kept
        sink = HostFile(directory / VARIABLES, max(budget, 0))
        async with self._tool(sandbox, "drain") as process:
            await process.close_stdin()
            fifo = (await self._answer(process))["fifo"]
            try:
                dumped, _ = await _together(self._in_kernel(runtime, f"dump({fifo!r})"), self._receive(process, sink))
            finally:
                await sink.close()
        if dumped.get("lost"):  # together they could not be pickled: nothing of them is kept
            kept["lost"] = [*kept["lost"], *_listed(dumped["lost"])]
            kept["variables"] = []
            os.unlink(sink.path)
            return kept
        kept["stored"] = sink.size
        return kept

    async def _receive(self, process: SandboxProcess, sink: HostFile) -> dict[str, Any]:
        async for chunk in _frames(process):
            sink.write(chunk)
        return await self._answer(process)

    # -- resume ----------------------------------------------------------------------------------

    async def restore(self, sandbox: Sandbox, runtime: Any) -> dict[str, Any]:
        """Put the saved files and variables into the sandbox's new kernel; the ``restore`` report (bounded)."""
        manifest = sandbox.snapshot or {}
        directory = self.directory(sandbox.id)
        if not directory.is_dir():
            raise SnapshotFailed(f"the saved state of sandbox {sandbox.id} is missing from the gateway's disk")
        async with self._tool(sandbox, "unpack") as process:
            await self._send(process, directory / FILES)
            unpacked = await self._answer(process)
        loaded = await self._restore_variables(sandbox, runtime, directory, self._state(directory, manifest))
        report = Budget()
        # Lost at the pause but not listed, and files the tool only counted:
        report.omit("lost", (_count((manifest.get("omitted") or {}).get("lost")) or 0)
                    + (_count(unpacked.get("skipped_more")) or 0))
        lost = [*_listed(manifest.get("lost")), *_listed(unpacked.get("skipped")), *_listed(loaded.get("lost"))]
        return {
            "files": _count(unpacked.get("files")),
            "lost": bounded(lost, report, "lost"),
            "variables": bounded(loaded.get("variables"), report, "variables"),
            "at": timestamps.to_iso(timestamps.now()),
            **report.summary(),
        }

    @staticmethod
    def _state(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """What the kernel is given back: ``state.json`` (a state saved before it existed: the manifest)."""
        try:
            fd = os.open(directory / STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {key: manifest.get(key) for key in RESTORED}
        with open(fd, "rb") as source:
            state: dict[str, Any] = json.loads(source.read())
        return state

    async def _restore_variables(self, sandbox: Sandbox, runtime: Any, directory: Path,
                                 state: dict[str, Any]) -> dict[str, Any]:
        if not state.get("variables"):
            return await self._in_kernel(runtime, f"restore(None, {state!r})")
        async with self._tool(sandbox, "fill") as process:
            fifo = (await self._answer(process))["fifo"]
            loaded, _ = await _together(self._in_kernel(runtime, f"restore({fifo!r}, {state!r})"),
                                        self._feed(process, directory / VARIABLES))
            return loaded

    async def _feed(self, process: SandboxProcess, path: Path) -> dict[str, Any]:
        await self._send(process, path)
        return await self._answer(process)

    # -- helpers ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tool(self, sandbox: Sandbox, op: str) -> AsyncIterator[SandboxProcess]:
        process = await self.commands.start(sandbox, TOOL)
        try:
            if not await process.write(json.dumps({"op": op}).encode() + b"\n"):
                raise SnapshotFailed("the snapshot tool in the sandbox did not start")
            yield process
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise SnapshotFailed(f"the snapshot tool in the sandbox failed: {exc}") from None
        finally:
            await process.close()

    @staticmethod
    async def _answer(process: SandboxProcess) -> dict[str, Any]:
        line = await process.readline(MAX_LINE)
        try:
            answer = json.loads(line)
        except ValueError:
            raise SnapshotFailed(f"the snapshot tool gave no answer ({process.stderr()[-300:] or 'no output'})") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            message = answer.get("message") if isinstance(answer, dict) else None
            if isinstance(answer, dict) and answer.get("error") == "disk_full":
                raise SandboxDiskFull(f"the sandbox's disk is full: {message}")
            raise SnapshotFailed(f"the snapshot tool failed: {message or answer!r}")
        return answer

    @staticmethod
    async def _send(process: SandboxProcess, path: Path) -> None:
        """The file's bytes to the tool's stdin in frames, then the end frame and the end of stdin."""
        with open(path, "rb", buffering=0) as source:
            while chunk := source.read(CHUNK):
                if not await process.write(struct.pack(">I", len(chunk)) + chunk):
                    break  # the tool stopped reading: its answer says why
            else:
                await process.write(END)
        await process.close_stdin()

    async def _in_kernel(self, runtime: Any, call: str) -> dict[str, Any]:
        """Run ``kernels/snapshot/variables.py`` and one call of it in the kernel, unseen; its report."""
        code = (f"__import__('builtins').exec({self.source!r}, {{'__name__': '_code_gateway_state'}}); "
                f"__import__('sys').modules['_code_gateway_state'].{call}")
        assert runtime.connection is not None, "the sandbox's kernel is not connected"
        values = await runtime.connection.run_silent(code, timeout=self.timeout, expressions=REPORT)
        report = values.get("report") or {}
        if report.get("status") != "ok" or "application/json" not in report.get("data", {}):
            raise SnapshotFailed(f"the kernel did not report its variables: {report.get('evalue', report)}")
        data = report["data"]["application/json"]
        if not isinstance(data, dict):
            raise SnapshotFailed("the kernel's report of its variables is not an object")
        return data


#: What ``state.json`` holds (and a manifest held before it existed).
RESTORED = ("variables", "modules", "execution_count")


def _listed(entries: Any) -> list[Any]:
    """``entries`` if it is a list (what a sandbox's tool or kernel reports may be anything)."""
    return entries if isinstance(entries, list) else []


def _count(value: Any, otherwise: int | None = 0) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else otherwise


async def _together(kernel: Any, tool: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the kernel's side and the tool's side of a FIFO transfer; the first failure cancels the other.

    (Left alone, a tool waiting for a kernel that failed would wait until its FIFO times out.)
    """
    tasks = [asyncio.ensure_future(kernel), asyncio.ensure_future(tool)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # raises the first failure
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results[0], results[1]


async def _frames(process: SandboxProcess) -> AsyncIterator[bytes]:
    """The payloads of the tool's frames, up to the end frame."""
    while True:
        header = await _exactly(process, 4)
        size = struct.unpack(">I", header)[0]
        if size == 0:
            return
        if size > 1 << 24:
            raise SnapshotFailed(f"the snapshot tool sent a frame of {size} bytes")
        yield await _exactly(process, size)


async def _exactly(process: SandboxProcess, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await process.read(size - len(data))
        if not chunk:
            raise SnapshotFailed(f"the snapshot tool's output ended early ({process.stderr()[-300:] or 'no error'})")
        data += chunk
    return bytes(data)
