"""WarmPool logic: what fits, claiming once, and backing off instead of looping hot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.sandboxes.model import ResourceLimits, Sandbox, SandboxStatus
from gateway.sandboxes import pool as pool_module
from gateway.sandboxes.pool import WarmPool, fits
from tests.waiting import until

PROFILE = ResourceLimits(cpu=1, memory_mb=512, disk_mb=1024, pids=256)


def test_what_fits_the_pool() -> None:
    assert fits(PROFILE, PROFILE, ["png"])
    assert fits(ResourceLimits(cpu=0.5, memory_mb=256, disk_mb=1024, pids=64, timeout=5), PROFILE, ["png"])
    assert not fits(ResourceLimits(cpu=2, disk_mb=1024), PROFILE, ["png"])
    assert not fits(ResourceLimits(memory_mb=1024, disk_mb=1024), PROFILE, ["png"])
    assert not fits(ResourceLimits(disk_mb=512), PROFILE, ["png"])
    assert not fits(ResourceLimits(disk_mb=1024, network=True), PROFILE, ["png"])
    assert not fits(PROFILE, PROFILE, ["png", "svg"])
    # Where the process limit is fixed at start (gVisor's rlimit): only the pool's own.
    assert fits(PROFILE, PROFILE, ["png"], exact_pids=True)
    assert not fits(ResourceLimits(disk_mb=1024, pids=64), PROFILE, ["png"], exact_pids=True)


def make_pool(start: Any, size: int = 2) -> tuple[WarmPool, list[Any]]:
    disposed: list[Any] = []

    async def dispose(pooled: Any) -> None:
        disposed.append(pooled)

    return WarmPool(start=start, dispose=dispose, saturated=lambda: None, profile=PROFILE, size=size), disposed


async def test_fills_claims_once_and_refills() -> None:
    started: list[Sandbox] = []

    async def start() -> Any:
        sandbox = Sandbox(owner="", resources=PROFILE, provisioner="fake", status=SandboxStatus.RUNNING)
        started.append(sandbox)
        return sandbox, object()

    pool, disposed = make_pool(start)
    pool.start()
    await until(pool.describe, lambda state: state["ready"] == 2, what="a full pool")
    first = pool.claim(PROFILE, ["png"], None)
    second = pool.claim(PROFILE, ["png"], None)
    assert first and second and first[0] is not second[0]
    assert pool.claim(ResourceLimits(memory_mb=4096, disk_mb=1024), ["png"], None) is None  # no fit: not a miss
    assert pool.claim(PROFILE, ["png"], "gvisor") is None  # another isolation than the pool's: not a miss
    await until(pool.describe, lambda state: state["ready"] == 2, what="the pool refilled")
    assert len(started) == 4 and pool.describe()["claimed"] == 2 and pool.describe()["missed"] == 0
    await pool.stop()
    assert len(disposed) == 2  # the two never claimed


async def test_a_failing_start_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def start() -> Any:
        attempts.append(loop.time())
        raise RuntimeError("image is broken")

    pool, _ = make_pool(start)
    pool.start()
    state = await until(pool.describe, lambda s: s["failed_starts"] >= 2, what="a second attempt", timeout=30)
    await pool.stop()
    tries = state["failed_starts"]
    # 1 s after the first failure, then doubling (later under load, never sooner): never a hot loop.
    for n, (earlier, later) in enumerate(zip(attempts, attempts[1:tries])):
        assert later - earlier >= 0.99 * 2 ** n, attempts
    assert state["paused"].startswith(f"backing off {2 ** (tries - 1):g} s")
    assert "start failed (image is broken)" in caplog.text  # why, for the operator


async def test_saturation_pauses_refilling_until_it_ends() -> None:
    saturated = True
    checks = 0
    attempts = 0

    def is_saturated() -> str | None:
        nonlocal checks
        checks += 1
        return "the machine is saturated" if saturated else None

    async def start() -> Any:
        nonlocal attempts
        assert not saturated, "must not start while saturated"
        attempts += 1
        return Sandbox(owner="", resources=PROFILE, provisioner="fake", status=SandboxStatus.RUNNING), object()

    pool = WarmPool(start=start, dispose=lambda p: asyncio.sleep(0), saturated=is_saturated, profile=PROFILE, size=1)
    pool.start()
    await until(lambda: checks, lambda n: n >= 1, what="a saturation check")
    assert pool.describe()["paused"] == "the machine is saturated" and attempts == 0
    saturated = False
    state = await until(pool.describe, lambda s: s["ready"] == 1, what="the pool to fill once no longer saturated")
    assert state["paused"] is None and attempts == 1
    await pool.stop()


async def test_refills_behind_starts_for_requests_as_soon_as_they_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """While sandboxes start for requests the pool waits; the end of the last one wakes it (no poll)."""
    monkeypatch.setattr(pool_module, "RECHECK_EVERY", 3600.0)  # only ``recheck`` can wake it in this test
    starting_for_requests = True
    attempts = 0

    async def start() -> Any:
        nonlocal attempts
        assert not starting_for_requests, "must not compete with the starts for requests"
        attempts += 1
        return Sandbox(owner="", resources=PROFILE, provisioner="fake", status=SandboxStatus.RUNNING), object()

    def waiting_for() -> str | None:
        return "sandboxes are being started for requests" if starting_for_requests else None

    pool = WarmPool(start=start, dispose=lambda p: asyncio.sleep(0), saturated=waiting_for, profile=PROFILE, size=1)
    pool.start()
    await until(pool.describe, lambda s: s["paused"] == "sandboxes are being started for requests",
                what="the pool to wait for the starts")
    assert attempts == 0
    starting_for_requests = False
    pool.recheck()
    state = await until(pool.describe, lambda s: s["ready"] == 1, what="the pool to refill once they ended")
    assert state["paused"] is None and attempts == 1
    await pool.stop()
