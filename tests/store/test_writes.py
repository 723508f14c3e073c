"""WriteQueue's logic, with a commit function that records batches (the real stores are proven in
test_sqlite.py and test_postgres.py): batching, coalescing only where it cannot reorder, order
kept across retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.store.writes import Outcome, Write, WriteQueue
from tests.waiting import until


class Recorder:
    """Commits by remembering each batch as (key, value) pairs; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[object, object]]] = []
        self.failing: str | None = None

    async def commit(self, batch: list[Write]) -> list[Outcome]:
        await asyncio.sleep(0)
        if self.failing:
            raise OSError(self.failing)
        self.batches.append([(write.key, write.statements[0][1][0]) for write in batch])
        return [1] * len(batch)


def put(key: object, value: object) -> Write:
    return Write([("SQL", (value,))], key=key)


@contextlib.asynccontextmanager
async def started(recorder: Recorder) -> AsyncIterator[WriteQueue]:
    queue = WriteQueue(recorder.commit, name="test", first_backoff=0.01, max_backoff=0.02)
    queue.start()
    try:
        yield queue
    finally:
        await queue.stop(timeout=5)


async def test_writes_made_together_share_a_batch_and_a_newer_version_takes_the_older_ones_place() -> None:
    recorder = Recorder()
    async with started(recorder) as queue:
        writes = [queue.add(put("a", 1)), queue.add(put("b", 1)), queue.add(put("a", 2))]
        assert await asyncio.gather(*writes) == [1, 1, 1]
        assert recorder.batches == [[("a", 2), ("b", 1)]]


async def test_no_write_moves_across_a_conditional_one() -> None:
    recorder = Recorder()
    async with started(recorder) as queue:
        writes = [queue.add(put("a", 1)), queue.add(put(None, "check")), queue.add(put("a", 2))]
        await asyncio.gather(*writes)
        assert recorder.batches == [[("a", 1), (None, "check"), ("a", 2)]]


async def test_a_failed_batch_is_retried_first_with_later_writes_behind_it() -> None:
    recorder = Recorder()
    recorder.failing = "disk full"
    async with started(recorder) as queue:
        first = [queue.add(put("a", 1)), queue.add(put("b", 1))]
        await until(lambda: queue.problem, what="the failure")
        assert queue.problem == "disk full"
        caught_up = asyncio.ensure_future(queue.caught_up())
        await asyncio.sleep(0)
        assert caught_up.done()  # readers do not wait for writes that cannot land
        later = [queue.add(put("c", 1)), queue.add(put("a", 2))]
        await until(lambda: queue.held() == 3, what="the later writes to join the failed batch")
        recorder.failing = None
        await asyncio.gather(*first, *later)
        assert recorder.batches == [[("a", 2), ("b", 1), ("c", 1)]]
        assert queue.problem is None and queue.failures >= 1


async def test_stop_gives_up_after_its_timeout_and_fails_what_is_left() -> None:
    recorder = Recorder()
    recorder.failing = "read-only file system"
    queue = WriteQueue(recorder.commit, name="test", first_backoff=0.01, max_backoff=0.02)
    queue.start()
    written = queue.add(put("a", 1))
    await until(lambda: queue.problem, what="the failure")
    await queue.stop(timeout=0.1)
    assert written.done() and "closed before" in str(written.exception())
