"""HistoryRetention: a sandbox that ended long enough ago is forgotten, with all its executions.

    history = HistoryRetention(store=store, parent=app)     # --history-retention (0: keep for ever)
    history.start()                   # a pass now, then every tenth of the retention (at most hourly)
    await history.prune()             # one pass: how many sandboxes it forgot
    await history.stop()

Only ended sandboxes (``model.ENDED``) are forgotten, by when they ended (``terminated_at``),
never a live or paused one, nor one a replica alive holds; afterwards the API knows them no more
than an id it never saw (404). Every replica sharing a store runs this: a pass removes a bounded
batch in one transaction, and passes on several replicas at once remove each sandbox once
(``gateway.store.history``). Paused sandboxes' saved state is not history: it is kept with them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from traitlets import Float, Int, TraitError, validate
from traitlets.config import LoggingConfigurable

from gateway import timestamps
from gateway.retention import prune_periodically
from gateway.sandboxes.model import ENDED
from gateway.store.base import Store
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)


class HistoryRetention(LoggingConfigurable):
    retention = Float(
        30 * 86400.0, help="Seconds an ended sandbox's record and executions are kept after it ended "
        "(0: for ever); then GET answers 404 for them, as for an id never seen."
    ).tag(config=True)
    batch = Int(
        500, help="Most sandboxes forgotten in one transaction (with their executions); a pass that forgot "
        "this many is followed by another a second later."
    ).tag(config=True)

    def __init__(self, *, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self._task: asyncio.Task[None] | None = None

    @validate("retention")
    def _valid_retention(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0:  # (NaN too)
            raise TraitError(
                f"--history-retention: seconds, 0 or more (0 keeps history for ever), not {value:g}")
        return value

    @validate("batch")
    def _valid_batch(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 1 <= value <= 900:  # (the ids go in one statement: SQLite takes 999 parameters at least)
            raise TraitError(f"--HistoryRetention.batch: from 1 to 900 sandboxes, not {value}")
        return value

    def start(self) -> None:
        if not self.retention:
            log.info("history: kept for ever (--history-retention=0)")
            return
        self._task = asyncio.create_task(prune_periodically(
            self._forget, self.retention, what="ended sandboxes with their executions", batch=self.batch
        ), name="history-retention")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], within=10.0, what="history retention")
            self._task = None

    async def prune(self) -> int:
        """One pass now: forget a batch of the sandboxes that ended more than ``retention`` seconds ago."""
        if not self.retention:
            return 0
        return await self._forget(timestamps.now().timestamp() - self.retention)

    async def _forget(self, before: float) -> int:
        return await self.store.prune_history(statuses=sorted(str(status) for status in ENDED), before=before, limit=self.batch)
