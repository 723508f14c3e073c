"""Which sandboxes each MCP session made, and the one it runs code in when none is named.

A session (the ``Mcp-Session-Id`` of the initialize handshake) gets its own sandbox on its first
``run_code``; every sandbox it made is deleted when the session ends: the client's ``DELETE``,
or no request for ``idle_timeout`` seconds (the MCP SDK forgets the session then too). The
stateless protocol (2026-07-28) has no sessions: there a call that names no sandbox gets a new
one, and the lifecycle rules (lifetime, idle timeout) end it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from gateway.errors import GatewayError
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.model import ENDED
from gateway.tasks import stop_tasks, wait_tasks

log = logging.getLogger(__name__)


@dataclasses.dataclass
class McpSession:
    owner: str
    made: list[str] = dataclasses.field(default_factory=list)
    default: str | None = None
    seen: float = dataclasses.field(default_factory=time.monotonic)
    #: Requests in flight (an open GET stream is one): a session with any is not idle.
    busy: int = 0


class McpSessions:
    def __init__(self, sandboxes: SandboxManager, idle_timeout: float) -> None:
        self.sandboxes = sandboxes
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, McpSession] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="mcp-session-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            await stop_tasks([self._reaper], within=10.0, what="MCP sessions")
        await wait_tasks(list(self._endings), within=10.0, what="MCP sessions")
        for session_id in list(self._sessions):
            await self.end(session_id)

    def seen(self, session_id: str, owner: str, busy: int = 0) -> None:
        """A request of the session began (``busy=1``), ended (``-1``) or opened it (``0``)."""
        session = self._sessions.setdefault(session_id, McpSession(owner))
        session.seen = time.monotonic()
        session.busy = max(0, session.busy + busy)

    async def create(self, session_id: str | None, owner: str, metadata: dict[str, Any] | None = None) -> str:
        """A new sandbox for ``owner``, remembered as made by the session (if there is one)."""
        sandbox = await self.sandboxes.create(owner, metadata={"mcp_session": session_id or "stateless", **(metadata or {})})
        if session_id is not None:
            self._sessions.setdefault(session_id, McpSession(owner)).made.append(sandbox.id)
        log.info("sandbox %s: made for MCP session %s", sandbox.id, session_id or "(stateless)")
        return sandbox.id

    async def default_sandbox(self, session_id: str | None, owner: str) -> tuple[str, bool]:
        """The session's own sandbox (made now if it has none, or its last one ended); whether it is new."""
        session = self._sessions.get(session_id) if session_id is not None else None
        if session is not None and session.default is not None:
            try:
                if (await self.sandboxes.get(session.default, owner)).status not in ENDED:
                    return session.default, False
            except GatewayError:
                pass
        sandbox_id = await self.create(session_id, owner)
        if session_id is not None:
            self._sessions[session_id].default = sandbox_id
        return sandbox_id, True

    def end_soon(self, session_id: str) -> None:
        """End a session in a task of ours (not the request's: the MCP SDK may still cancel that one)."""
        task = asyncio.create_task(self.end(session_id), name=f"mcp-session-end-{session_id}")
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def end(self, session_id: str) -> None:
        """The session is over: delete every sandbox it made."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        for sandbox_id in session.made:
            try:
                await self.sandboxes.terminate(sandbox_id, session.owner)
            except GatewayError:
                pass  # deleted already, by a tool call or its owner
            except Exception:
                log.exception("sandbox %s: could not delete it at the end of MCP session %s", sandbox_id, session_id)
        log.info("MCP session %s ended; %d sandboxes it made deleted", session_id, len(session.made))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.idle_timeout / 2))
            now = time.monotonic()
            for session_id, session in list(self._sessions.items()):
                if not session.busy and now - session.seen > self.idle_timeout:
                    await self.end(session_id)
