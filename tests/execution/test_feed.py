"""ExecutionFeed: every follower sees every event in order, at its own pace."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from gateway.execution.feed import ExecutionFeed, PrefixSums, event_size


async def collect(feed: ExecutionFeed, delay: float = 0) -> list[int]:
    seen = []
    async for event in feed.follow():
        seen.append(event["n"])
        await asyncio.sleep(delay)
    return seen


async def test_fast_and_slow_followers_see_everything_in_order() -> None:
    feed = ExecutionFeed()
    fast = asyncio.create_task(collect(feed))
    slow = asyncio.create_task(collect(feed, delay=0.01))
    for n in range(20):
        feed.publish({"n": n})
        if n % 5 == 0:
            await asyncio.sleep(0)
    feed.close({"n": 20})
    assert await fast == list(range(21))
    assert await slow == list(range(21))


async def test_a_late_follower_replays_from_the_start() -> None:
    feed = ExecutionFeed()
    feed.publish({"n": 0})
    feed.close({"n": 1})
    assert await collect(feed) == [0, 1]


def update(display_id: str, n: int) -> dict[str, Any]:
    return {"type": "update_display", "display_id": display_id,
            "output": {"output_type": "display_data", "data": {"text/plain": str(n) * 100}, "metadata": {}}}


async def test_only_the_latest_update_of_each_display_is_kept() -> None:
    feed = ExecutionFeed()
    feed.publish({"type": "output", "n": 0})
    for n in range(1, 100):
        feed.publish(update("a" if n % 2 else "b", n))
    feed.close({"type": "execution", "n": 100})
    assert len(feed) == 101  # positions are kept, so a re-attach at event N still means the same event
    events = [e async for e in feed.follow()]
    assert [e["type"] for e in events] == ["output", "update_display", "update_display", "execution"]
    assert [e["output"]["data"]["text/plain"][:2] for e in events[1:3]] == ["98", "99"]
    assert feed.held_bytes == sum(event_size(e) for e in events)


async def test_a_cursor_says_how_far_behind_it_is() -> None:
    feed = ExecutionFeed()
    cursor = feed.cursor()
    for n in range(10):
        feed.publish(update("a", n))
    feed.publish(update("b", 1))
    assert cursor.behind == feed.held_bytes == 2 * event_size(update("a", 0))
    feed.close()
    seen = [e async for e in cursor.follow()]
    assert len(seen) == 2 and cursor.behind == 0


def test_prefix_sums_stay_right_as_sizes_change() -> None:
    sums, values = PrefixSums(), []
    rng = random.Random(7)
    for _ in range(2000):
        if values and rng.random() < 0.3:
            index = rng.randrange(len(values))
            values[index] = rng.randrange(100)
            sums.set(index, values[index])
        else:
            values.append(rng.randrange(100))
            sums.append(values[-1])
        n = rng.randrange(len(values) + 1)
        assert sums.prefix(n) == sum(values[:n]) and sums.total == sum(values)
