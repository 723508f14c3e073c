"""Heartbeats and leases on both stores (a real SQLite file and a real PostgreSQL 15): a lease is
good while its holder beats, judged by the database's clock; two stores (two replicas) racing for
one sandbox never both get it; a lapsed holder's sandboxes are the ones listed as unheld."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.store.sql import SQLStore
from tests.stores import Backend
from tests.waiting import until


def sandbox(sid: str, status: str = "running") -> dict[str, Any]:
    return {"id": sid, "owner": "alice", "status": status}


async def test_a_lease_is_good_while_its_holder_beats(store: SQLStore) -> None:
    assert await store.beat("a", "http://a:1", 30.0) is False  # never alive before
    assert await store.beat("a", "http://a:1", 30.0) is True
    assert await store.beat("b", "http://b:2", 0.5) is False
    assert await store.claim_lease("s1", "a")
    assert await store.claim_lease("s1", "a")  # (one's own: again)
    assert not await store.claim_lease("s1", "b")  # a is alive
    lease = await store.get_lease("s1")
    assert lease is not None and lease["holder"] == "a" and lease["address"] == "http://a:1" and lease["alive"]
    assert 25 < lease["expires_in"] <= 30
    assert await store.get_lease("s2") is None
    assert await store.claim_lease("s2", "b")
    assert await store.leases_of("a") == ["s1"] and await store.leases_of("b") == ["s2"]

    # b stops beating: its heartbeat runs out by the database's clock, and its lease is anyone's.
    await until(lambda: store.get_lease("s2"), lambda lease: not lease["alive"], what="b's heartbeat to lapse")
    assert await store.beat("b", "http://b:2", 30.0) is False  # it lapsed: b must check what it still holds
    assert await store.claim_lease("s2", "b")  # nobody took it meanwhile: b keeps it
    await store.stop_beating("b")
    assert await store.claim_lease("s2", "a")
    assert await store.leases_of("b") == []
    replicas = {r["id"]: r for r in await store.list_replicas()}
    assert replicas["a"]["alive"] and not replicas["b"]["alive"] and replicas["b"]["address"] == "http://b:2"

    await store.drop_lease("s2", "b")  # not b's: nothing happens
    assert (await store.get_lease("s2"))["holder"] == "a"  # type: ignore[index]
    await store.drop_lease("s2", "a")
    assert await store.get_lease("s2") is None


async def test_unheld_sandboxes_are_the_unleased_and_those_of_lapsed_holders(store: SQLStore) -> None:
    await store.beat("alive", "http://alive", 30.0)
    await store.beat("gone", "http://gone", 30.0)
    for sid, status in [("held", "running"), ("lost", "running"), ("nobody", "failed"), ("ended", "terminated"),
                        ("lost-paused", "paused")]:
        await store.put_sandbox(sandbox(sid, status))
    assert await store.claim_lease("held", "alive")
    assert await store.claim_lease("lost", "gone")
    assert await store.claim_lease("lost-paused", "gone")
    assert await store.claim_lease("ended", "gone")
    live = ["creating", "running", "failed", "terminating", "paused"]
    assert [r["id"] for r in await store.unheld_sandboxes(live)] == ["nobody"]
    await store.stop_beating("gone")
    assert [r["id"] for r in await store.unheld_sandboxes(live)] == ["lost", "nobody", "lost-paused"]
    assert [r["id"] for r in await store.unheld_sandboxes(["paused"])] == ["lost-paused"]


async def test_replicas_racing_for_a_sandbox_never_both_get_it(backend: Backend) -> None:
    stores = [backend.store() for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        for n, store in enumerate(stores):
            await store.beat(f"r{n}", f"http://r{n}", 30.0)
        for round_ in range(5):
            sid = f"s{round_}"
            won = await asyncio.gather(*(store.claim_lease(sid, f"r{n}") for n, store in enumerate(stores)
                                         for _ in range(3)))
            assert sum(won) == 3, won  # one replica, three times
            winners = {n // 3 for n, w in enumerate(won) if w}
            assert len(winners) == 1
            holder = (await stores[0].get_lease(sid))["holder"]  # type: ignore[index]
            assert holder == f"r{winners.pop()}"
        # The holder goes: the others race again; one of them gets each sandbox.
        await stores[0].stop_beating("r0")
        await stores[1].stop_beating("r1")
        await stores[2].stop_beating("r2")
        await stores[1].beat("r1", "http://r1", 30.0)
        await stores[2].beat("r2", "http://r2", 30.0)
        won = await asyncio.gather(*(stores[n].claim_lease("s0", f"r{n}") for n in (1, 2)))
        assert sorted(won) == [False, True]
    finally:
        await asyncio.gather(*(store.close() for store in stores))
