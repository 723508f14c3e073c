"""How often in a row a Jupyter kernel that keeps dying is restarted, counted as Jupyter's own restarter counts.

    budget = RestartBudget(limit=5, stable_after=10.0)
    if budget.spend(sandbox.id):       # a death: True while the row has fewer than ``limit`` restarts
        ...                            # restart it
        budget.restarted(sandbox.id)   # the fresh kernel answers
    else:
        ...                            # leave it dead (status: dead)
    budget.forget(sandbox.id)          # the sandbox is gone

jupyter_client's ``KernelRestarter`` restarts a dead kernel up to ``restart_limit`` (5) times in a
row and then presumes it dead; a kernel that stayed up for ``stable_start_time`` (10 s) starts a
new row. Here the time up counts from the moment the restarted kernel answered, not from its
death: a container start can take seconds on a busy host, and that is not time alive.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class _Row:
    restarts: int = 0
    #: When the last restarted kernel answered (the clock's time), None while it is being restarted.
    up_since: float | None = None


class RestartBudget:
    def __init__(self, limit: int, stable_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.stable_after = stable_after
        self._clock = clock
        self._rows: dict[str, _Row] = {}

    def spend(self, sandbox_id: str) -> bool:
        """A death of the sandbox's kernel: may it be restarted (one more restart in the row)?

        Once the row is spent the answer is no, and the row is dropped: a restart its owner asks
        for later starts a new one.
        """
        row = self._rows.setdefault(sandbox_id, _Row())
        if row.up_since is not None and self._clock() - row.up_since >= self.stable_after:
            row.restarts = 0
        if row.restarts >= self.limit:
            del self._rows[sandbox_id]
            return False
        row.restarts += 1
        row.up_since = None
        return True

    def restarted(self, sandbox_id: str) -> None:
        """The kernel restarted after a death answers: the time it stays up starts now."""
        row = self._rows.get(sandbox_id)
        if row is not None:
            row.up_since = self._clock()

    def pending(self, sandbox_id: str) -> bool:
        """A restart was granted (``spend``) and its kernel has not answered yet."""
        row = self._rows.get(sandbox_id)
        return row is not None and row.up_since is None

    def in_row(self, sandbox_id: str) -> int:
        """Restarts in the current row (0 when none)."""
        row = self._rows.get(sandbox_id)
        return row.restarts if row is not None else 0

    def forget(self, sandbox_id: str) -> None:
        self._rows.pop(sandbox_id, None)
