"""Per-user quotas, counted from the store: live sandboxes, their CPU and memory, paused sandboxes, executions per minute.

    quotas = UserQuotas(store=store, parent=app)
    await quotas.check(record)                                  # early, before starting anything for it
    await quotas.put_sandbox(record, retry_after=soonest_end)   # inserted only within the quotas, or QuotaExceeded
    await quotas.put_execution(record, owner)                   # likewise for the rate of executions
    usage = await quotas.usage("alice")                         # GET /api/v1/usage

The check and the write are one statement in one transaction (``Store.put_sandbox_within``,
``Store.put_execution_within``): two requests racing for the last slot cannot both get it, and a
restart resets nothing, since nothing is counted in memory. A refusal is a ``QuotaExceeded``
(429) whose message names the quota, its limit and the current use, with a ``retry_after``: when
the oldest execution leaves the last minute, or when the soonest of the user's sandboxes ends by
itself (expiry, idleness).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from gateway import timestamps
from gateway.errors import QuotaExceeded
from gateway.store.base import Budget, Record, Store

#: Statuses that hold a container (counted as live), and the paused one.
LIVE = ("creating", "running", "failed", "terminating")
PAUSED = ("paused",)
#: The window of the executions-per-minute quota, in seconds.
MINUTE = 60.0
#: The longest Retry-After we ask a client to wait.
MAX_RETRY_AFTER = 3600


class UserQuotas(LoggingConfigurable):
    max_sandboxes = Int(20, help="Most live sandboxes one user may hold at once (0: no limit).").tag(config=True)
    max_cpu = Float(0.0, help="Most CPU cores one user's live sandboxes may ask for together (0: no limit).").tag(
        config=True
    )
    max_memory_mb = Int(0, help="Most memory (MiB) one user's live sandboxes may ask for together (0: no limit).").tag(
        config=True
    )
    max_paused = Int(100, help="Most paused sandboxes one user may keep (0: no limit).").tag(config=True)
    max_executions_per_minute = Int(
        0, help="Most executions one user may start in any 60 seconds (0: no limit)."
    ).tag(config=True)

    def __init__(self, *, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store

    def budgets(self) -> list[Budget]:
        return [
            Budget(statuses=LIVE, count=self.max_sandboxes, cpu=self.max_cpu, memory_mb=self.max_memory_mb),
            Budget(statuses=PAUSED, count=self.max_paused),
        ]

    # -- sandboxes -------------------------------------------------------------------------------

    async def check(self, record: Record, *, retry_after: Callable[[], float | None] = lambda: None) -> None:
        """Refuse early (read, not atomic) what ``put_sandbox`` would refuse: before a sandbox is started for it."""
        refusal = self.refusal(record, await self.store.owner_usage(record["owner"], exclude=record["id"]))
        if refusal is not None:
            raise QuotaExceeded(refusal, retry_after=_seconds(retry_after()))

    async def put_sandbox(self, record: Record, *, events: list[Record] | None = None,
                          retry_after: Callable[[], float | None] = lambda: None) -> None:
        """Write the sandbox record (in its new status) if that keeps its owner within the quotas."""
        if await self.store.put_sandbox_within(record, self.budgets(), events=events or []):
            return
        use = await self.store.owner_usage(record["owner"], exclude=record["id"])
        refusal = self.refusal(record, use) or f"quota exceeded: user {record['owner']!r}'s sandboxes changed meanwhile"
        raise QuotaExceeded(refusal, retry_after=_seconds(retry_after()))

    def refusal(self, record: Record, use: dict[str, tuple[int, float, int]]) -> str | None:
        """Which quota the record does not fit in, with its limit and the owner's current use; None if it fits."""
        owner = record["owner"]
        live = _sum(use, LIVE)
        resources = record["resources"]
        if record["status"] in PAUSED:
            held = _sum(use, PAUSED)[0]
            if self.max_paused and held + 1 > self.max_paused:
                return (f"quota exceeded: paused sandboxes (--max-paused-per-user): user {owner!r} keeps {held} "
                        f"of at most {self.max_paused}; resume or delete one")
            return None
        if self.max_sandboxes and live[0] + 1 > self.max_sandboxes:
            return (f"quota exceeded: live sandboxes (--max-sandboxes-per-user): user {owner!r} holds {live[0]} "
                    f"of at most {self.max_sandboxes}; pause or delete one")
        if self.max_cpu and live[1] + resources["cpu"] > self.max_cpu:
            return (f"quota exceeded: CPU (--max-cpu-per-user): user {owner!r}'s live sandboxes have "
                    f"{live[1]:g} cores of at most {self.max_cpu:g}, and this one asks for {resources['cpu']:g}")
        if self.max_memory_mb and live[2] + resources["memory_mb"] > self.max_memory_mb:
            return (f"quota exceeded: memory (--max-memory-mb-per-user): user {owner!r}'s live sandboxes have "
                    f"{live[2]} MiB of at most {self.max_memory_mb} MiB, and this one asks for "
                    f"{resources['memory_mb']} MiB")
        return None

    # -- executions ------------------------------------------------------------------------------

    async def put_execution(self, record: Record, owner: str) -> None:
        """Write a new execution's record if its owner started fewer than the limit in the last minute."""
        limit = self.max_executions_per_minute
        if not limit:
            await self.store.put_execution(record)
            return
        now = timestamps.now().timestamp()
        if await self.store.put_execution_within(record, owner, since=now - MINUTE, limit=limit, at=now):
            return
        count, oldest = await self.store.recent_executions(owner, since=now - MINUTE)
        raise QuotaExceeded(
            f"quota exceeded: executions per minute (--max-executions-per-minute): user {owner!r} started "
            f"{count} in the last 60 s, the limit is {limit}",
            retry_after=_seconds(None if oldest is None else oldest + MINUTE - now),
        )

    # -- what the user sees ----------------------------------------------------------------------

    async def usage(self, owner: str) -> dict[str, Any]:
        """The user's use of each quota beside its limit (0: no limit), for ``GET /api/v1/usage``."""
        use = await self.store.owner_usage(owner)
        live = _sum(use, LIVE)
        now = timestamps.now().timestamp()
        executions, _ = await self.store.recent_executions(owner, since=now - MINUTE)
        return {
            "user": owner,
            "sandboxes": {"used": live[0], "limit": self.max_sandboxes},
            "cpu": {"used": live[1], "limit": self.max_cpu},
            "memory_mb": {"used": live[2], "limit": self.max_memory_mb},
            "paused_sandboxes": {"used": _sum(use, PAUSED)[0], "limit": self.max_paused},
            "executions_per_minute": {"used": executions, "limit": self.max_executions_per_minute},
        }


def _sum(use: dict[str, tuple[int, float, int]], statuses: tuple[str, ...]) -> tuple[int, float, int]:
    """(count, CPU, memory) over the statuses given."""
    rows = [use[s] for s in statuses if s in use]
    return sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows)


def _seconds(delay: float | None) -> int:
    """A Retry-After: whole seconds, at least 1, at most an hour (an hour when nothing ends by itself)."""
    if delay is None:
        return MAX_RETRY_AFTER
    return max(1, min(MAX_RETRY_AFTER, math.ceil(delay)))
