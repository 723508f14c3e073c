"""SQLiteStore: records survive reopening; listing order and filters; hashed keys."""

from __future__ import annotations

from typing import Any

from gateway.store.sqlite import SQLiteStore


async def test_records_survive_reopening_and_keep_order(tmp_path: Any) -> None:
    path = str(tmp_path / "g.db")
    store = SQLiteStore(path)
    await store.open()
    for i, owner in enumerate(["a", "b", "a"]):
        await store.put_sandbox({"id": f"s{i}", "owner": owner, "status": "running", "n": i})
    await store.put_sandbox({"id": "s0", "owner": "a", "status": "terminated", "n": 0})
    for i in range(3):
        await store.put_execution({"id": f"e{i}", "sandbox_id": "s0", "status": "queued"})
    await store.put_execution({"id": "e0", "sandbox_id": "s0", "status": "completed"})
    await store.add_api_key("a", "hash-a")
    await store.close()

    store = SQLiteStore(path)
    await store.open()
    assert [r["id"] for r in await store.list_sandboxes(owner="a")] == ["s0", "s2"]
    assert [r["id"] for r in await store.list_sandboxes(statuses=["running"])] == ["s1", "s2"]
    assert (await store.get_sandbox("s0"))["status"] == "terminated"
    assert await store.get_sandbox("nope") is None
    assert [r["id"] for r in await store.list_executions("s0")] == ["e0", "e1", "e2"]
    assert [r["id"] for r in await store.list_executions("s0", limit=1, offset=1)] == ["e1"]
    assert [r["id"] for r in await store.list_unfinished_executions()] == ["e1", "e2"]
    assert await store.find_api_key("hash-a") == "a"
    assert await store.find_api_key("hash-x") is None
    assert await store.count_api_keys() == 1
    await store.close()
