"""ExecutionFeed: every follower sees every event in order, at its own pace."""

from __future__ import annotations

import asyncio

from gateway.execution.feed import ExecutionFeed


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
