"""WarmPool logic: what fits, claiming once, and backing off instead of looping hot."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.sandboxes.model import ResourceLimits, Sandbox, SandboxStatus
from gateway.sandboxes.pool import WarmPool, fits

PROFILE = ResourceLimits(cpu=1, memory_mb=512, disk_mb=1024, pids=256)


def test_what_fits_the_pool() -> None:
    assert fits(PROFILE, PROFILE, ["png"])
    assert fits(ResourceLimits(cpu=0.5, memory_mb=256, disk_mb=1024, pids=64, timeout=5), PROFILE, ["png"])
    assert not fits(ResourceLimits(cpu=2, disk_mb=1024), PROFILE, ["png"])
    assert not fits(ResourceLimits(memory_mb=1024, disk_mb=1024), PROFILE, ["png"])
    assert not fits(ResourceLimits(disk_mb=512), PROFILE, ["png"])
    assert not fits(ResourceLimits(disk_mb=1024, network=True), PROFILE, ["png"])
    assert not fits(PROFILE, PROFILE, ["png", "svg"])


def make_pool(start: Any, size: int = 2) -> tuple[WarmPool, list[Any]]:
    disposed: list[Any] = []

    async def dispose(pooled: Any) -> None:
        disposed.append(pooled)

    return WarmPool(start=start, dispose=dispose, saturated=lambda: False, profile=PROFILE, size=size), disposed


async def test_fills_claims_once_and_refills() -> None:
    started: list[Sandbox] = []

    async def start() -> Any:
        sandbox = Sandbox(owner="", resources=PROFILE, provisioner="fake", status=SandboxStatus.RUNNING)
        started.append(sandbox)
        return sandbox, object()

    pool, disposed = make_pool(start)
    pool.start()
    for _ in range(100):
        if pool.describe()["ready"] == 2:
            break
        await asyncio.sleep(0.01)
    first = pool.claim(PROFILE, ["png"])
    second = pool.claim(PROFILE, ["png"])
    assert first and second and first[0] is not second[0]
    assert pool.claim(ResourceLimits(memory_mb=4096, disk_mb=1024), ["png"]) is None  # no fit: not a miss
    for _ in range(100):
        if pool.describe()["ready"] == 2:
            break
        await asyncio.sleep(0.01)
    assert len(started) == 4 and pool.describe()["claimed"] == 2
    await pool.stop()
    assert len(disposed) == 2  # the two never claimed


async def test_a_failing_start_backs_off() -> None:
    attempts = 0

    async def start() -> Any:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("image is broken")

    pool, _ = make_pool(start)
    pool.start()
    await asyncio.sleep(2.5)
    state = pool.describe()
    await pool.stop()
    assert attempts <= 3  # 1 s, then 2 s between tries: never a hot loop
    assert state["failed_starts"] == attempts
    assert "backing off" in state["paused"]


async def test_saturation_pauses_refilling() -> None:
    attempts = 0

    async def start() -> Any:
        nonlocal attempts
        attempts += 1
        raise AssertionError("must not start while saturated")

    pool = WarmPool(start=start, dispose=lambda p: asyncio.sleep(0), saturated=lambda: True, profile=PROFILE, size=1)
    pool.start()
    await asyncio.sleep(0.3)
    assert pool.describe()["paused"] == "the machine is saturated"
    await pool.stop()
    assert attempts == 0
