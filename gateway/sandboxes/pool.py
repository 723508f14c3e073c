"""The warm pool: sandboxes started ahead of time, so creating one takes milliseconds, not a second.

    pool = WarmPool(start=manager.start_pooled, saturated=manager.saturated, profile=limits, parent=manager)
    pool.start()
    taken = pool.claim(requested_limits, figure_formats, isolation)   # (sandbox, runtime) or None: a cold start
    await pool.stop()

A pooled sandbox is ready (container up, kernel answered ``kernel_info``), owned by nobody and in
no record until claimed. It is used once and never returned: kernels hold state. A request fits
the pool when it asks for no network, the pool's isolation, disk size and figure formats, and at
most the pool's CPU, memory and pids (those are lowered on the running container when claimed;
where the isolation fixes the process limit at start, gVisor's, exactly the pool's pids).

Refilling never starves live work: one sandbox starts at a time, not while sandboxes are being
started for requests (a burst of creates takes the pool's sandboxes, then the pool refills behind
it, as soon as the last of them is up), not while the machine is saturated, and after a failed start the pool waits (1 s, doubling to ``max_backoff``) so a broken
image cannot loop hot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from gateway.sandboxes.model import DEFAULT_FIGURE_FORMATS, ResourceLimits, Sandbox, SandboxStatus
from gateway.sandboxes.runtime import SandboxRuntime
from gateway.tasks import done_within, stop_tasks, wait_tasks

log = logging.getLogger(__name__)

Pooled = tuple[Sandbox, SandboxRuntime]

#: Seconds the refill task and each disposal get to end at stop (a kernel being started is stopped again).
STOP_WITHIN = 20.0
#: Seconds between looks at what keeps the pool waiting (the load average moves by itself; the end
#: of the starts for requests wakes the pool at once through ``recheck``).
RECHECK_EVERY = 1.0


def fits(requested: ResourceLimits, profile: ResourceLimits, figure_formats: list[str], *,
         exact_pids: bool = False) -> bool:
    """Whether a pooled sandbox of ``profile`` can become what was requested."""
    return (
        not requested.network
        and requested.disk_mb == profile.disk_mb
        and requested.cpu <= profile.cpu
        and requested.memory_mb <= profile.memory_mb
        and (requested.pids == profile.pids if exact_pids else requested.pids <= profile.pids)
        and list(figure_formats) == list(DEFAULT_FIGURE_FORMATS)
    )


class WarmPool(LoggingConfigurable):
    size = Int(2, help="Ready sandboxes kept for the default resource profile (0: no pool).").tag(config=True)
    max_load_per_core = Float(
        1.5, help="Refilling pauses while the 1-minute load average per CPU core is at least this."
    ).tag(config=True)
    max_backoff = Float(60.0, help="Longest wait (s) after failed starts before trying again.").tag(config=True)
    max_wait_behind_starts = Float(
        10.0, help="Longest wait (s) behind sandboxes being started for requests before the pool starts "
                   "one anyway: under a steady stream of overlapping starts it would otherwise never refill."
    ).tag(config=True)

    def __init__(
        self,
        *,
        start: Callable[[], Coroutine[Any, Any, Pooled]],
        dispose: Callable[[Pooled], Coroutine[Any, Any, None]],
        saturated: Callable[[], str | None],
        profile: ResourceLimits,
        isolation: str | None = None,
        exact_pids: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: The isolation of every pooled sandbox (the operator's default).
        self.isolation = isolation
        self.exact_pids = exact_pids
        self._start = start
        self._dispose = dispose
        self._saturated = saturated
        self.profile = profile
        self._ready: deque[Pooled] = deque()
        self._wanted = asyncio.Event()
        #: Set when what made the pool wait may have changed (``recheck``).
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.starting = False
        self.failures = 0
        self.paused: str | None = None
        self.claimed = 0
        self.missed = 0
        self._disposals: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self.size > 0:
            self._stopping = False
            self._task = asyncio.create_task(self._refill(), name="warm-pool-refill")

    async def stop(self) -> None:
        """Stop refilling (a kernel being started is stopped again) and dispose of every ready sandbox.

        The refill loop also ends by itself once ``_stopping`` is set, so a cancellation lost in
        a library's ``wait_for`` cannot keep it waiting.
        """
        self._stopping = True
        self._wanted.set()
        self._changed.set()
        if self._task is not None:
            await stop_tasks([self._task], within=STOP_WITHIN, what="warm pool")
            self._task = None
        while self._ready:
            self._discard(self._ready.popleft())
        await wait_tasks(list(self._disposals), within=STOP_WITHIN, what="warm pool")

    def claim(self, requested: ResourceLimits, figure_formats: list[str], isolation: str | None) -> Pooled | None:
        """A ready sandbox for this request, or None (no fit, or the pool is empty)."""
        if (self.size <= 0 or isolation != self.isolation
                or not fits(requested, self.profile, figure_formats, exact_pids=self.exact_pids)):
            return None
        while self._ready:
            sandbox, runtime = self._ready.popleft()
            self._wanted.set()
            if sandbox.status == SandboxStatus.RUNNING:
                self.claimed += 1
                return sandbox, runtime
            self._discard((sandbox, runtime))  # its kernel died while it waited
        self.missed += 1
        return None

    def recheck(self) -> None:
        """What kept the pool waiting may be over (the last start for a request ended): look again now."""
        self._changed.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` or until ``recheck`` (or ``stop``)."""
        self._changed.clear()
        await done_within(self._changed.wait(), seconds)

    def _discard(self, pooled: Pooled) -> None:
        task = asyncio.create_task(self._dispose(pooled), name=f"warm-pool-dispose-{pooled[0].id}")
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    def notice_exit(self) -> None:
        """A pooled kernel died: prune it and refill."""
        for pooled in [p for p in self._ready if p[0].status != SandboxStatus.RUNNING]:
            self._ready.remove(pooled)
            self._discard(pooled)
        self._wanted.set()

    async def _refill(self) -> None:
        backoff = 0.0
        while not self._stopping:
            if len(self._ready) >= self.size:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            waiting_for = self._saturated()
            if waiting_for:
                self.paused = waiting_for
                await self._pause(RECHECK_EVERY)
                continue
            self.paused = None
            self.starting = True
            began = time.monotonic()
            try:
                pooled = await self._start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                self.failures += 1
                backoff = min(max(1.0, backoff * 2), self.max_backoff)
                self.paused = f"backing off {backoff:g} s after a failed start (the log says why)"
                log.warning("warm pool: start failed (%s); next try in %g s", exc, backoff)
                await asyncio.sleep(backoff)
                continue
            finally:
                self.starting = False
            if self._stopping:  # stopped while this one started (and its cancellation was lost)
                self._discard(pooled)
                return
            backoff = 0.0
            self._ready.append(pooled)
            log.debug("warm pool: sandbox %s ready in %.2f s", pooled[0].id, time.monotonic() - began)

    def describe(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "ready": sum(1 for s, _ in self._ready if s.status == SandboxStatus.RUNNING),
            "starting": self.starting,
            "paused": self.paused,
            "failed_starts": self.failures,
            "claimed": self.claimed,
            "missed": self.missed,
            "profile": self.profile.to_dict(),
            "isolation": self.isolation,
        }
