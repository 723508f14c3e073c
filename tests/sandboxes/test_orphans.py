"""Which kernels left on the engine a replica may remove (``gateway.sandboxes.orphans``), decided against a
real store: only those whose sandbox ended or never had a record, and of the latter only this replica's own
(at start-up) or those of a replica of this store that is gone — never a live replica's, another gateway's,
or one a live sandbox runs under by another id (resumed on a warm-pool kernel)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.provisioners.launcher import LeftKernel
from gateway.sandboxes.orphans import orphaned_kernel
from gateway.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "gateway.db"))
    await opened.open()
    await opened.put_sandbox({"id": "ended", "owner": "a", "status": "terminated"})
    await opened.put_sandbox({"id": "live", "owner": "a", "status": "running"})
    await opened.put_sandbox({"id": "resumed", "owner": "a", "status": "running", "kernel": {"runtime_id": "pooled"}})
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize(("sandbox_id", "instance", "dead_only", "removed"), [
    ("held", "me", False, False),          # this replica runs it
    ("ended", "me", False, True),          # its sandbox ended
    ("ended", "gone", True, True),
    ("ended", "me", True, False),          # (a live replica's own business, ours included: it removes its
    ("ended", "alive", True, False),       # containers as their sandboxes end, and what is left at its start)
    ("live", "gone", True, False),         # a live record: whoever takes it over re-attaches this kernel
    ("spare", "me", False, True),          # no record, ours, at start-up: a warm-pool kernel of our last run
    ("spare", "me", True, False),          # ... but not later: our pool may be starting it right now
    ("spare", "gone", True, True),         # a dead replica's pool
    ("spare", "alive", True, False),       # a live replica's pool
    ("spare", "stranger", False, False),   # a replica this store never saw: another gateway's
    ("pooled", "gone", True, False),       # no record of its own, but a live sandbox was resumed on it
])
async def test_what_may_be_removed(store: SQLiteStore, sandbox_id: str, instance: str, dead_only: bool,
                                   removed: bool) -> None:
    replicas = {"me": True, "alive": True, "gone": False}
    decided = await orphaned_kernel(LeftKernel(sandbox_id, instance, "c0ffee"), store=store, me="me",
                                    replicas=replicas, held={"held"}, borrowed=await store.runtime_ids_in_use(),
                                    dead_only=dead_only)
    assert decided is removed
