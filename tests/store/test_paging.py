"""Paged reads of the store: sandboxes by pages with their total, a sandbox's executions a few at a time."""

from __future__ import annotations

from typing import Any

from gateway.store.sqlite import SQLiteStore


async def test_sandboxes_by_pages_with_their_total(tmp_path: Any) -> None:
    store = SQLiteStore(str(tmp_path / "g.db"))
    await store.open()
    try:
        for i in range(7):
            store.put_sandbox({"id": f"s{i}", "owner": "a" if i % 2 == 0 else "b", "status": "running"})
        await store.put_sandbox({"id": "s0", "owner": "a", "status": "terminated"})
        assert [r["id"] for r in await store.list_sandboxes(limit=3)] == ["s0", "s1", "s2"]
        assert [r["id"] for r in await store.list_sandboxes(limit=3, offset=5)] == ["s5", "s6"]
        assert [r["id"] for r in await store.list_sandboxes(owner="a", limit=2, offset=1)] == ["s2", "s4"]
        assert await store.list_sandboxes(offset=7) == []
        assert await store.count_sandboxes() == 7
        assert await store.count_sandboxes(owner="a") == 4
        assert await store.count_sandboxes(owner="a", statuses=["running"]) == 3
        assert await store.count_sandboxes(statuses=["paused"]) == 0
    finally:
        await store.close()


async def test_executions_are_read_a_page_at_a_time_in_order(tmp_path: Any) -> None:
    store = SQLiteStore(str(tmp_path / "g.db"))
    await store.open()
    reads: list[tuple[int | None, int]] = []
    listing = store.list_executions

    async def counted(sandbox_id: str, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        reads.append((limit, offset))
        return await listing(sandbox_id, limit=limit, offset=offset)

    store.list_executions = counted  # type: ignore[method-assign]
    try:
        for i in range(20):
            store.put_execution({"id": f"e{i}", "sandbox_id": "s" if i != 3 else "other", "status": "completed"})
        got = [r["id"] async for r in store.iter_executions("s", page=8)]
        assert got == [f"e{i}" for i in range(20) if i != 3]
        assert reads == [(8, 0), (8, 8), (8, 16), (8, 19)]  # never more than a page held
        assert [r async for r in store.iter_executions("nobody")] == []
    finally:
        await store.close()
