"""Records that age out: one background loop that prunes what is older than a retention.

    task = asyncio.create_task(prune_periodically(prune, 7 * 86400.0, what="events"))

``prune(before)`` removes what is older than ``before`` (epoch seconds) and says how many it
removed. A pass runs at once, then every tenth of the retention (at least 1 s, at most an hour).
A pruner that removes at most ``batch`` at a time (one bounded transaction) and removed that many
is called again a second later, until the backlog is gone. A pass that fails (the store is down)
is logged and the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from gateway import timestamps

log = logging.getLogger(__name__)

#: Seconds between two passes when the last one removed a full batch.
BACKLOG_PAUSE = 1.0


def pass_interval(retention: float) -> float:
    """Seconds between two passes: a tenth of the retention, within [1 s, 1 h]."""
    return min(3600.0, max(1.0, retention / 10))


async def prune_periodically(prune: Callable[[float], Awaitable[int]], retention: float, *, what: str,
                             batch: int = 0) -> None:
    """Prune ``what`` older than ``retention`` seconds for ever (until cancelled)."""
    while True:
        cutoff = (timestamps.now() - timedelta(seconds=retention)).timestamp()
        removed = 0
        try:
            removed = await prune(cutoff)
            if removed:
                log.info("%s: removed %d older than %.10g s", what, removed, retention)
        except Exception:
            log.warning("%s: could not prune", what, exc_info=True)
        await asyncio.sleep(BACKLOG_PAUSE if batch and removed >= batch else pass_interval(retention))
