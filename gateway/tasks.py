"""Stopping background tasks for sure: cancel, wait a bounded time, and never hang on one.

    await stop_tasks(self._tasks, within=10.0, what="sandbox manager")

One ``task.cancel()`` plus an unbounded ``gather`` is how a shutdown hangs: Python 3.11's
``asyncio.wait_for`` (ours were replaced by ``asyncio.timeout``, but libraries still use it)
swallows a cancellation that arrives as its inner await finishes, and a task in a loop then
goes on waiting. So each task is cancelled and given ``within`` seconds to finish its cleanup
(a kernel being started is stopped again, a container removed); one still running then is
logged with its stack, cancelled once more, given ``within`` again, and left behind.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

log = logging.getLogger(__name__)


async def done_within(awaitable: Awaitable[Any], seconds: float) -> bool:
    """Whether ``awaitable`` (say an event's ``wait()``) finished within ``seconds``; it is given
    up after that. ``asyncio.timeout``, not ``wait_for``: that can swallow a cancellation."""
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        return False
    return True


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], *, within: float, what: str) -> None:
    """Cancel ``tasks`` and wait until they end, at most about ``2 * within`` seconds in all."""
    pending = {task for task in tasks if not task.done()}
    for attempt in (1, 2):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=within)
        for task in pending:
            log.error("%s: task %s still runs %g s after it was cancelled (attempt %d):\n%s",
                      what, _name(task), within, attempt, _stack(task))


async def wait_tasks(tasks: Iterable[asyncio.Future[Any]], *, within: float, what: str) -> None:
    """Let ``tasks`` finish by themselves for up to ``within`` seconds, then stop the rest."""
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=within)
    await stop_tasks(pending, within=within, what=what)


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


def _stack(task: asyncio.Future[Any]) -> str:
    if not isinstance(task, asyncio.Task):
        return ""
    out = io.StringIO()
    task.print_stack(limit=12, file=out)
    return out.getvalue()
