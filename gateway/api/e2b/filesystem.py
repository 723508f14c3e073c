"""envd's filesystem service (Connect RPC): stat, make_dir, move, list, remove, and watching a directory.

Each call is one run of the sandbox's file tool (``SandboxFiles``), confined to its working
directory (``/home/user`` in E2B's terms, see ``paths``). A directory is watched by looking at it
again every ``POLL`` seconds and reporting the differences (created, written, removed, mode
changed): the tool cannot follow inotify across a ``docker exec``. Events therefore come up to
``POLL`` seconds late, a file created and removed between two looks is not seen, and a rename is
a removal plus a creation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from gateway.api.e2b import paths
from gateway.api.e2b.connect import current_sandbox
from gateway.api.e2b.envd_rpc.filesystem import filesystem_pb as pb
from gateway.api.e2b.envd_rpc.filesystem.filesystem_connect import Filesystem
from gateway.api.e2b.rpc import translated
from gateway.sandboxes.files import SandboxFiles

TYPES = {"file": pb.FileType.FILE, "directory": pb.FileType.DIRECTORY, "symlink": pb.FileType.SYMLINK}
#: Seconds between two looks at a watched directory.
POLL = 1.0
#: Seconds of no event after which a watch stream sends a keepalive.
KEEPALIVE = 10.0
#: Depth of a recursive watch.
RECURSIVE_DEPTH = 32
#: Watchers (the non-streaming kind) one sandbox may hold.
MAX_WATCHERS = 16

Snapshot = dict[str, tuple[str, Any, Any, Any]]


def entry_info(found: dict[str, Any]) -> pb.EntryInfo:
    modified = Timestamp.from_datetime(datetime.fromisoformat(found["modified"].replace("Z", "+00:00")))
    info = pb.EntryInfo(
        name=found["name"], type=TYPES.get(found["type"], pb.FileType.UNSPECIFIED),
        path=paths.absolute(found["path"]), size=found.get("size") or 0, mode=found.get("mode", 0),
        permissions=found.get("permissions", ""), owner=found.get("owner", ""), group=found.get("group", ""),
        modified_time=modified,
    )
    if found.get("symlink_target") is not None:
        info.symlink_target = found["symlink_target"]
    return info


def snapshot(listing: dict[str, Any]) -> Snapshot:
    return {e["path"]: (e["type"], e.get("size"), e.get("modified"), e.get("mode")) for e in listing["entries"]}


def changes(before: Snapshot, after: Snapshot, root: str) -> list[pb.FilesystemEvent]:
    """What happened between two looks, as envd's events (names relative to the watched directory)."""
    events = []
    prefix = f"{root}/" if root else ""
    for path in sorted(set(before) | set(after)):
        name = path[len(prefix):] if path.startswith(prefix) else path
        old, new = before.get(path), after.get(path)
        if old is None:
            events.append(pb.FilesystemEvent(name=name, type=pb.EventType.CREATE))
        elif new is None:
            events.append(pb.FilesystemEvent(name=name, type=pb.EventType.REMOVE))
        elif old[:3] != new[:3]:
            events.append(pb.FilesystemEvent(name=name, type=pb.EventType.WRITE))
        elif old[3] != new[3]:
            events.append(pb.FilesystemEvent(name=name, type=pb.EventType.CHMOD))
    return events


class Watcher:
    def __init__(self, sandbox_id: str, root: str, depth: int, seen: Snapshot) -> None:
        self.sandbox_id = sandbox_id
        self.root = root
        self.depth = depth
        self.seen = seen


class FilesystemService(Filesystem):
    """The ``filesystem.Filesystem`` service for connectrpc, over ``SandboxFiles``."""

    def __init__(self, files: SandboxFiles) -> None:
        self.files = files
        self._watchers: dict[str, Watcher] = {}

    def _target(self, path: str) -> tuple[str, str]:
        sandbox = current_sandbox.get()
        return sandbox.id, paths.relative(path)

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[Any, Any]) -> pb.StatResponse:
        with translated():
            sandbox_id, path = self._target(request.path)
            return pb.StatResponse(entry=entry_info(await self.files.stat(sandbox_id, self._owner(), path)))

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext[Any, Any]) -> pb.MakeDirResponse:
        with translated():
            sandbox_id, path = self._target(request.path)
            made = await self.files.make_dir(sandbox_id, self._owner(), path)
        if not made["created"]:
            raise ConnectError(Code.ALREADY_EXISTS, f"directory {request.path} already exists")
        return pb.MakeDirResponse(entry=entry_info(made))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext[Any, Any]) -> pb.MoveResponse:
        with translated():
            sandbox_id, source = self._target(request.source)
            moved = await self.files.move(sandbox_id, self._owner(), source, paths.relative(request.destination))
            return pb.MoveResponse(entry=entry_info(moved))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext[Any, Any]) -> pb.ListDirResponse:
        with translated():
            sandbox_id, path = self._target(request.path)
            listing = await self.files.list_deep(sandbox_id, self._owner(), path, max(1, request.depth))
            return pb.ListDirResponse(entries=[entry_info(e) for e in listing["entries"]])

    async def remove(self, request: pb.RemoveRequest, ctx: RequestContext[Any, Any]) -> pb.RemoveResponse:
        with translated():
            sandbox_id, path = self._target(request.path)
            await self.files.delete(sandbox_id, self._owner(), path)
            return pb.RemoveResponse()

    async def watch_dir(self, request: pb.WatchDirRequest,
                        ctx: RequestContext[Any, Any]) -> AsyncIterator[pb.WatchDirResponse]:
        watcher = await self._watch(request.path, request.recursive)
        started: Oneof[Literal["start"], pb.WatchDirResponse.StartEvent] = Oneof("start", pb.WatchDirResponse.StartEvent())
        yield pb.WatchDirResponse(event=started)
        quiet_since = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            events = await self._look(watcher)
            for event in events:
                happened: Oneof[Literal["filesystem"], pb.FilesystemEvent] = Oneof("filesystem", event)
                yield pb.WatchDirResponse(event=happened)
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                quiet_since = time.monotonic()
                alive: Oneof[Literal["keepalive"], pb.WatchDirResponse.KeepAlive] = Oneof(
                    "keepalive", pb.WatchDirResponse.KeepAlive())
                yield pb.WatchDirResponse(event=alive)

    async def create_watcher(self, request: pb.CreateWatcherRequest,
                             ctx: RequestContext[Any, Any]) -> pb.CreateWatcherResponse:
        sandbox_id = current_sandbox.get().id
        if sum(1 for w in self._watchers.values() if w.sandbox_id == sandbox_id) >= MAX_WATCHERS:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, f"a sandbox may have {MAX_WATCHERS} watchers at once")
        watcher = await self._watch(request.path, request.recursive)
        watcher_id = str(uuid.uuid4())
        self._watchers[watcher_id] = watcher
        return pb.CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(self, request: pb.GetWatcherEventsRequest,
                                 ctx: RequestContext[Any, Any]) -> pb.GetWatcherEventsResponse:
        return pb.GetWatcherEventsResponse(events=await self._look(self._watcher(request.watcher_id)))

    async def remove_watcher(self, request: pb.RemoveWatcherRequest,
                             ctx: RequestContext[Any, Any]) -> pb.RemoveWatcherResponse:
        self._watcher(request.watcher_id)
        del self._watchers[request.watcher_id]
        return pb.RemoveWatcherResponse()

    def _watcher(self, watcher_id: str) -> Watcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None or watcher.sandbox_id != current_sandbox.get().id:
            raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id} not found")
        return watcher

    async def _watch(self, path: str, recursive: bool) -> Watcher:
        with translated():
            sandbox_id, root = self._target(path)
            depth = RECURSIVE_DEPTH if recursive else 1
            found = await self.files.stat(sandbox_id, self._owner(), root)
            if found["type"] != "directory":
                raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} is not a directory")
            listing = await self.files.list_deep(sandbox_id, self._owner(), root, depth)
            return Watcher(sandbox_id, root, depth, snapshot(listing))

    async def _look(self, watcher: Watcher) -> list[pb.FilesystemEvent]:
        with translated():
            listing = await self.files.list_deep(watcher.sandbox_id, self._owner(), watcher.root, watcher.depth)
        now = snapshot(listing)
        events = changes(watcher.seen, now, watcher.root)
        watcher.seen = now
        return events

    def forget(self, sandbox_id: str) -> None:
        for watcher_id in [k for k, w in self._watchers.items() if w.sandbox_id == sandbox_id]:
            del self._watchers[watcher_id]

    @staticmethod
    def _owner() -> str:
        return current_sandbox.get().owner
