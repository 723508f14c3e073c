"""ExecutionFeed: every follower sees every event in order, at its own pace."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.execution.feed import MERGE_BYTES, ExecutionFeed, PrefixSums, event_size


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


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"type": "output", "output": {"output_type": "stream", "name": name, "text": text}}


async def texts(feed: ExecutionFeed, start: int = 0) -> list[tuple[str, str]]:
    return [(e["output"].get("name", "?"), e["output"].get("text", "")) async for e in feed.follow(start)
            if e is not None and e["type"] == "output"]


async def test_stream_text_no_follower_took_yet_joins_the_last_event_in_order() -> None:
    feed = ExecutionFeed()
    for n in range(1000):
        feed.publish(stream(f"{n}\n"))
    feed.publish(stream("oops\n", "stderr"))
    feed.publish(stream("more\n"))
    feed.publish({"type": "output", "output": {"output_type": "display_data", "data": {}, "metadata": {}}})
    feed.publish(stream("last\n"))
    feed.close({"type": "execution"})
    everything = "".join(f"{n}\n" for n in range(1000))
    assert await texts(feed) == [("stdout", everything), ("stderr", "oops\n"), ("stdout", "more\n"),
                                 ("?", ""), ("stdout", "last\n")]
    assert len(feed) == 6  # positions: the same for a follower re-attaching later
    assert await texts(feed, 2) == [("stdout", "more\n"), ("?", ""), ("stdout", "last\n")]
    assert feed.held_bytes == sum(event_size(e) for e in feed._events if e is not None)


async def test_an_event_a_follower_took_is_final_and_joins_are_bounded() -> None:
    feed = ExecutionFeed()
    cursor = feed.cursor()
    feed.publish(stream("a"))
    first = [e async for e in _until_caught_up(cursor)]
    feed.publish(stream("b"))  # the follower has "a": "b" is an event of its own
    feed.publish(stream("c"))
    assert [e["output"]["text"] for e in first] == ["a"]
    big = "x" * (MERGE_BYTES - 1)
    feed.publish(stream(big))  # over the bound with "bc": another event
    feed.publish(stream("y"))  # fits beside it: joined
    feed.close()
    assert [e["output"]["text"] for e in [e async for e in cursor.follow()]] == ["bc", big + "y"]
    late = feed.cursor()
    assert [e["output"]["text"] async for e in late.follow()] == ["a", "bc", big + "y"]


async def _until_caught_up(cursor: Any) -> Any:
    while cursor.position < len(cursor.feed):
        async for event in cursor.follow(idle=0.01):
            if event is None:
                return
            yield event


async def test_the_final_event_comes_once_stored_unless_a_follower_waits_for_that_itself() -> None:
    feed = ExecutionFeed()
    feed.publish({"n": 0})
    stored = asyncio.get_running_loop().create_future()
    feed.close({"n": 1}, stored=stored)
    plain = asyncio.create_task(collect(feed))
    early: list[int] = []
    async for event in feed.follow(early_end=True):
        early.append(event["n"])
    waiting = asyncio.create_task(feed.stored())
    await asyncio.sleep(0.05)
    assert early == [0, 1]  # at once
    assert not plain.done() and not waiting.done()  # the plain follower took event 0 and waits
    stored.set_result(None)
    assert await plain == [0, 1]
    await waiting
    await feed.stored()  # (at once, from then on)


async def test_a_final_event_that_never_will_be_stored_is_given_to_no_follower() -> None:
    feed = ExecutionFeed()
    feed.publish({"n": 0})
    stored = asyncio.get_running_loop().create_future()
    feed.close({"n": 1}, stored=stored)
    plain = asyncio.create_task(collect(feed))
    await asyncio.sleep(0.05)
    stored.set_exception(LookupError("not stored"))
    with pytest.raises(LookupError):
        await plain  # (it had event 0; the final one it never gets)
    for _ in range(2):  # as it fails, and for anyone asking later
        with pytest.raises(LookupError):
            await feed.stored()
    early = feed.follow(early_end=True)
    assert [event["n"] async for event in early] == [0, 1]  # (who waits itself is told by stored())
