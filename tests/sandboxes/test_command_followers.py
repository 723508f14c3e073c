"""Followers of a command's output (E2B's commands): each at its own pace, bounded in bytes.

A follower more than ``MAX_BEHIND_BYTES`` behind is cut off with a clear reason, what waited for
it dropped at once, while the command and its other followers go on: a client that does not read
(say, an SDK user who never iterates a background command) cannot make the gateway hold a
flood's output. Unit tests of ``Follower`` and ``Command``, then a real slow reader: the E2B SDK
not reading a command in a Docker sandbox that writes 256 MiB.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import CommandExitException
from e2b_code_interpreter import Sandbox

from gateway.errors import TooManyFollowers
from gateway.sandboxes.processes import (
    CHUNK_COST,
    MAX_BEHIND_BYTES,
    Command,
    CommandChannel,
    Follower,
    FollowerSlots,
)
from tests.api.e2b.conftest import e2b_gateway_process, gateway_options
from tests.gateways import GatewayProcess
from tests.stalled import memory_of

MiB = 1 << 20
CHUNK = b"x" * (64 << 10)
CUT = ("cut", "more than 4.0 MiB of output waiting")


def command(slots: FollowerSlots | None = None) -> Command:
    return Command("sandbox", 7, ["yes"], "", {}, None, CommandChannel(), slots=slots or FollowerSlots())


async def test_a_follower_that_falls_behind_is_cut_off_and_what_waited_for_it_is_dropped() -> None:
    follower = Follower()
    offered = 0
    while follower.offer("stdout", CHUNK):
        offered += 1
        assert follower.waiting_bytes <= MAX_BEHIND_BYTES
    assert offered == MAX_BEHIND_BYTES // (len(CHUNK) + CHUNK_COST)
    assert follower.cut and follower.waiting_bytes == 0  # (dropped at once, not when it reads)
    assert not follower.offer("stdout", b"more") and not follower.offer("end", 0)
    assert await follower.get() == CUT


async def test_tiny_chunks_count_what_holding_them_costs() -> None:
    follower = Follower()
    taken = 0
    while follower.offer("stdout", b"."):
        taken += 1
    assert taken == MAX_BEHIND_BYTES // (1 + CHUNK_COST)


async def test_its_end_always_fits_and_so_does_a_chunk_while_nothing_waits() -> None:
    follower = Follower(max_bytes=1000)
    assert follower.offer("stdout", b"y" * 5000)  # (nothing waited: it is not behind)
    assert await follower.get() == ("stdout", b"y" * 5000) and follower.waiting_bytes == 0
    assert follower.offer("stdout", b"y" * 800) and follower.offer("end", 0)
    assert [await follower.get(), await follower.get()] == [("stdout", b"y" * 800), ("end", 0)]


async def collect(events: AsyncIterator[tuple[str, Any]], pace: float = 0.0) -> list[tuple[str, Any]]:
    got = []
    async for event in events:
        got.append(event)
        await asyncio.sleep(pace)
    return got


async def test_a_slow_follower_is_cut_off_while_the_command_and_a_follower_keeping_up_go_on() -> None:
    running = command()
    keeping_up = asyncio.ensure_future(collect(running.follow()))
    stalled = running.follow()
    first = asyncio.ensure_future(anext(stalled))
    await asyncio.sleep(0)  # (both follow from here on)
    for _ in range(2 * MAX_BEHIND_BYTES // len(CHUNK)):  # twice the bound, the keeping-up reading as it comes
        running.publish("stdout", CHUNK)
        await asyncio.sleep(0)
    running.finish(0)
    assert await first == ("stdout", CHUNK)  # (it took one, then read no more)
    assert await collect(stalled) == [CUT]  # (its iteration ends with the cut)
    got = await keeping_up
    assert got[-1] == ("end", 0) and sum(len(value) for _, value in got[:-1]) == 2 * MAX_BEHIND_BYTES
    assert running.exit_code == 0 and not running._followers


async def test_the_commands_of_a_sandbox_share_their_followers_slots() -> None:
    slots = FollowerSlots(limit=2)
    one, two = command(slots), command(slots)
    first, second = one.follow(), two.follow()
    waiting = [asyncio.ensure_future(anext(first)), asyncio.ensure_future(anext(second))]
    await asyncio.sleep(0)
    assert slots.taken == 2
    with pytest.raises(TooManyFollowers, match="2 followers already"):
        await anext(one.follow())
    one.finish(0)  # its follower leaves (once it has read the end): its slot is free again
    assert await waiting[0] == ("end", 0)
    assert await collect(first) == [] and slots.taken == 1
    third = two.follow()
    waiting.append(asyncio.ensure_future(anext(third)))
    await asyncio.sleep(0)
    assert slots.taken == 2
    waiting[2].cancel()  # (a follower that goes away before the end, as a client hanging up)
    await asyncio.gather(waiting[2], return_exceptions=True)
    assert slots.taken == 1
    two.finish(0)
    assert await waiting[1] == ("end", 0)
    assert await collect(second) == [] and slots.taken == 0


# -- a real slow reader --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of its own: its peak memory is this module's alone."""
    started = e2b_gateway_process(tmp_path_factory.mktemp("followers"))
    yield started
    asyncio.run(started.stop())


@pytest.mark.docker
def test_an_sdk_client_that_does_not_read_is_cut_off_and_the_command_goes_on(gateway: GatewayProcess) -> None:
    sandbox = Sandbox.create(timeout=300, **gateway_options(gateway))
    try:
        assert gateway.process is not None
        before = memory_of(gateway.process.pid)
        flood = 256 * MiB
        handle = sandbox.commands.run(f"head -c {flood} /dev/zero; echo written > done.txt", background=True)
        deadline = time.monotonic() + 120
        while not sandbox.files.exists("done.txt"):  # (its client reads nothing meanwhile)
            assert time.monotonic() < deadline, "the command did not go on while its client did not read"
            time.sleep(0.2)
        grown = memory_of(gateway.process.pid)["peak"] - before["peak"]
        assert grown < 24 * MiB, f"the gateway's peak memory grew by {grown / MiB:.0f} MiB"
        with pytest.raises(CommandExitException) as cut:
            handle.wait()
        assert len(cut.value.stdout) < 32 * MiB  # (what was on its way when it was cut; the rest dropped)
        assert cut.value.error is not None and "fell behind the command's output" in cut.value.error
        assert "more than 4.0 MiB of output waiting" in cut.value.error
        # The sandbox serves its next command as ever.
        assert sandbox.commands.run("cat done.txt").stdout == "written\n"
    finally:
        sandbox.kill()


def test_the_bound_is_documented() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"{MAX_BEHIND_BYTES >> 20} MiB" in readme
