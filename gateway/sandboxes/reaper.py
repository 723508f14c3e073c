"""SandboxReaper: ends sandboxes whose lifetime is over, and pauses or terminates idle ones.

    reaper = SandboxReaper(sandboxes=lambda: manager.known(), active=manager.is_active,
                           act=manager.reap, parent=manager)
    reaper.start()
    await reaper.stop()

Every ``interval`` seconds it looks at each sandbox the manager holds (a comparison of two
timestamps each, so thousands cost nothing) and hands the ones that are due to ``act(sandbox,
reason)``: ``expired`` at ``expires_at``, whatever the sandbox is doing; ``idle`` when a running
sandbox saw no activity for ``idle_timeout`` seconds and nothing keeps it active (a running or
queued execution, a connected WebSocket or Jupyter channel). At most ``concurrency`` actions run
at once, so a wave of expiries cannot start hundreds of container removals together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from gateway import timestamps
from gateway.sandboxes.model import Sandbox, SandboxStatus
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

EXPIRED = "expired"
IDLE = "idle"

#: Statuses in which a sandbox is between two states: its current transition finishes first.
IN_TRANSITION = frozenset({SandboxStatus.CREATING, SandboxStatus.TERMINATING, SandboxStatus.TERMINATED})


def due(sandbox: Sandbox, now: datetime, *, active: bool) -> str | None:
    """Why ``sandbox`` must end or pause now (``expired``, ``idle``), or None."""
    if sandbox.status in IN_TRANSITION:
        return None
    if sandbox.expires_at is not None and now >= sandbox.expires_at:
        return EXPIRED
    if sandbox.status in (SandboxStatus.RUNNING, SandboxStatus.FAILED) and not active:
        if now - sandbox.last_active_at >= timedelta(seconds=sandbox.idle_timeout):
            return IDLE
    return None


class SandboxReaper(LoggingConfigurable):
    interval = Float(1.0, help="Seconds between two looks for expired and idle sandboxes.").tag(config=True)
    concurrency = Int(4, help="Most sandboxes expired, paused or terminated at once.").tag(config=True)

    def __init__(
        self,
        *,
        sandboxes: Callable[[], Iterable[Sandbox]],
        active: Callable[[str], bool],
        act: Callable[[Sandbox, str], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._sandboxes = sandboxes
        self._active = active
        self._act = act
        self._task: asyncio.Task[None] | None = None
        self._acting: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max(1, self.concurrency))
        #: Sweeps done so far (tests wait on it instead of sleeping).
        self.sweeps = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sandbox-reaper")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._acting.values()) if t is not None]
        await stop_tasks(tasks, within=10.0, what="sandbox reaper")
        self._task = None

    async def _loop(self) -> None:
        while True:
            self.sweep()
            await asyncio.sleep(self.interval)

    def sweep(self) -> None:
        """Start the action of every sandbox that is due and not already being acted on."""
        now = timestamps.now()
        for sandbox in list(self._sandboxes()):
            if sandbox.id in self._acting:
                continue
            reason = due(sandbox, now, active=self._active(sandbox.id))
            if reason is not None:
                task = asyncio.create_task(self._run(sandbox, reason), name=f"reap-{reason}-{sandbox.id}")
                self._acting[sandbox.id] = task
        self.sweeps += 1

    async def _run(self, sandbox: Sandbox, reason: str) -> None:
        try:
            async with self._slots:
                # Looked at again: the wait for a slot may have changed what is due.
                if due(sandbox, timestamps.now(), active=self._active(sandbox.id)) == reason:
                    await self._act(sandbox, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sandbox %s: could not act on it (%s)", sandbox.id, reason)
        finally:
            self._acting.pop(sandbox.id, None)
