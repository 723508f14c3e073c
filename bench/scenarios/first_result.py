"""Time to first result: ``POST /sandboxes`` then ``1+1``, with the warm pool full and with the pool off.

Baselines: pooled vs cold (the same gateway work minus the pool), cold vs a raw start (our
provisioner starting a container kernel with no gateway, then jupyter_client running ``1+1``).
Each sample's sandbox is deleted untimed; with the pool on, the next sample waits until
``/health`` shows the pool full again (bounded; a sample taken otherwise is not counted).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import clients
from bench.harness import Bench, ChildExited, Gateway, RawKernels
from bench.measure import Series, log

POOL_SIZE = 2


async def first_result(http: clients.HttpConnection) -> str:
    sandbox = await clients.create_sandbox(http)
    await clients.rest_execute(http, sandbox["id"], "1+1")
    return str(sandbox["id"])


async def sample_gateway(gateway: Gateway, series: Series, n: int, budget: float,
                         before: Any = None) -> None:
    http = await gateway.connect()
    deadline = time.monotonic() + budget
    try:
        for i in range(n):
            if time.monotonic() > deadline:
                log(f"  time budget spent after {i} samples")
                break
            if before is not None and not await before():
                continue
            began = time.perf_counter()
            try:
                sandbox_id = await first_result(http)
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
                await http.close()
                http = await gateway.connect()
                continue
            series.add(time.perf_counter() - began)
            await clients.delete_sandbox(http, sandbox_id)
    finally:
        await http.close()


async def pool_full(gateway: Gateway, timeout: float) -> dict[str, Any] | None:
    """The pool state once it holds ``size`` ready sandboxes and starts none; None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = (await gateway.health()).get("pool") or {}
        if pool.get("size") and pool.get("ready", 0) >= pool["size"] and not pool.get("starting"):
            return pool  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    return None


async def run_raw(bench: Bench, series: Series, n: int, budget: float) -> None:
    async with RawKernels(bench) as raw:
        deadline = time.monotonic() + budget
        for i in range(n):
            if time.monotonic() > deadline:
                log(f"  time budget spent after {i} samples")
                break
            began = time.perf_counter()
            try:
                kernel_id, client = await raw.start()
                await clients.raw_execute(client, "1+1")
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
                continue
            series.add(time.perf_counter() - began)
            await raw.stop(kernel_id)


async def run(bench: Bench) -> None:
    from bench.scenarios.live import pool_args

    n, budget = bench.n(30, 4), bench.n(150, 30)
    out: dict[str, Any] = {}
    bench.results["first_result"] = out

    log(f"first result, raw: our provisioner starts a container kernel, jupyter_client runs 1+1 "
        f"({n} samples)")
    raw = Series("raw_start", "raw container start + 1+1")
    await run_raw(bench, raw, n, budget)
    out["raw"] = raw.to_dict()
    log(f"  p50 {raw.p50}  p99 {raw.p99}  errors {raw.errors}")

    log(f"first result, pool off: POST /sandboxes + execute 1+1 ({n} samples)")
    cold = Series("cold", "first result, pool off")
    async with Gateway(bench, "cold", **pool_args()) as gateway:
        await sample_gateway(gateway, cold, n, budget)
    out["cold"] = cold.to_dict()
    log(f"  p50 {cold.p50}  p99 {cold.p99}  errors {cold.errors}")

    log(f"first result, pool warm (--pool-size={POOL_SIZE}): POST /sandboxes + execute 1+1 ({n} samples)")
    pooled = Series("pooled", "first result, pool warm")
    out["pooled"] = {"available": False}
    try:
        gateway = Gateway(bench, "pool", pool_size=POOL_SIZE)
        await gateway.__aenter__()
    except ChildExited as exc:
        if "pool" in exc.tail.lower():
            log("  the gateway refuses --pool-size: no warm pool yet (n/a)")
            out["pooled"] = {"available": False,
                             "reason": "the gateway has no --pool-size (no warm pool yet)"}
            return
        raise
    not_refilled = 0
    try:
        async def refilled() -> bool:
            nonlocal not_refilled
            if await pool_full(gateway, 120) is None:
                not_refilled += 1
                log("  the pool did not refill within 120 s: sample skipped")
                return False
            return True

        await sample_gateway(gateway, pooled, n, budget + n * 5, before=refilled)
        health = await gateway.health()
    finally:
        await gateway.close()
    out["pooled"] = {**pooled.to_dict(), "available": True, "pool": health.get("pool"),
                     "not_refilled": not_refilled}
    pool = health.get("pool") or {}
    log(f"  p50 {pooled.p50}  p99 {pooled.p99}  errors {pooled.errors}  "
        f"(claimed {pool.get('claimed')}, missed {pool.get('missed')})")
