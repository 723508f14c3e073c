"""Time to first result: ``POST /sandboxes`` then ``1+1``, with the warm pool full and with the pool off;
and a burst of sandboxes created at once, the warm pool refilling behind it.

Baselines: pooled vs cold (the same gateway work minus the pool), cold vs a raw start (our
provisioner starting a container kernel with no gateway, then jupyter_client running ``1+1``).
Raw and cold samples are taken in interleaved rounds (raw then cold, then cold then raw), both
set up before the first round, so a change in the shared machine's load weighs on both alike.
Each sample's sandbox is deleted untimed; with the pool on, the next sample waits until
``/health`` shows the pool full again (bounded; a sample taken otherwise is not counted).

The burst: ``BURST`` concurrent ``POST /sandboxes`` against a gateway with a warm pool of
``POOL_SIZE``; reported: the time until the last one answered (each with a running kernel),
each create's latency, how many came from the pool, and how long the pool took to be full again
after the burst. Bounded: every create has ``BURST_TIMEOUT``; all the burst's sandboxes are
deleted (and the gateway's containers removed) afterwards, also on failure.

The gateways with a pool run without the load-average guard of refilling (``NO_LOAD_GUARD``):
the load of a shared machine is mostly others', and would keep the pool from ever refilling; the
refill still waits for the starts for requests, which is what the burst shows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import clients
from bench.harness import Bench, ChildExited, Gateway, RawKernels
from bench.measure import Series, log

POOL_SIZE = 2
#: For the gateways with a pool: its refill waits for the starts for requests but not for the load
#: average, which on a shared machine is mostly others' (the operator's guard, tested elsewhere).
NO_LOAD_GUARD = ["--WarmPool.max_load_per_core=1000"]
#: Sandboxes created at once in the burst.
BURST = 50
#: Seconds each create of the burst may take (then it counts as a failure).
BURST_TIMEOUT = 120.0


async def first_result(http: clients.HttpConnection) -> str:
    sandbox = await clients.create_sandbox(http)
    await clients.rest_execute(http, sandbox["id"], "1+1")
    return str(sandbox["id"])


class GatewaySampler:
    """Cold or pooled samples on one gateway over one connection (re-opened after a failure)."""

    def __init__(self, gateway: Gateway, series: Series) -> None:
        self.gateway = gateway
        self.series = series
        self.http: clients.HttpConnection | None = None

    async def sample(self) -> None:
        if self.http is None:
            self.http = await self.gateway.connect()
        began = time.perf_counter()
        try:
            sandbox_id = await first_result(self.http)
        except Exception as exc:
            self.series.fail(f"{type(exc).__name__}: {exc}")
            await self.close()
            return
        self.series.add(time.perf_counter() - began)
        await clients.delete_sandbox(self.http, sandbox_id)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None


async def sample_raw(raw: RawKernels, series: Series) -> None:
    began = time.perf_counter()
    try:
        kernel_id, client = await raw.start()
        await clients.raw_execute(client, "1+1")
    except Exception as exc:
        series.fail(f"{type(exc).__name__}: {exc}")
        return
    series.add(time.perf_counter() - began)
    await raw.stop(kernel_id)


async def pool_full(gateway: Gateway, timeout: float) -> dict[str, Any] | None:
    """The pool state once it holds ``size`` ready sandboxes and starts none; None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = (await gateway.health()).get("pool") or {}
        if pool.get("size") and pool.get("ready", 0) >= pool["size"] and not pool.get("starting"):
            return pool  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    return None


async def run_raw_and_cold(bench: Bench, raw_series: Series, cold: Series, n: int, budget: float) -> None:
    """``n`` interleaved rounds of one raw and one cold sample, the order swapped every round."""
    from bench.scenarios.live import pool_args

    async with RawKernels(bench) as raw, Gateway(bench, "cold", **pool_args()) as gateway:
        sampler = GatewaySampler(gateway, cold)
        deadline = time.monotonic() + budget
        try:
            for i in range(n):
                if time.monotonic() > deadline:
                    log(f"  time budget spent after {i} rounds")
                    break
                steps = [sample_raw(raw, raw_series), sampler.sample()]
                for step in steps if i % 2 == 0 else reversed(steps):
                    await step
        finally:
            await sampler.close()


async def run_pooled(bench: Bench, out: dict[str, Any], n: int, budget: float) -> None:
    log(f"first result, pool warm (--pool-size={POOL_SIZE}): POST /sandboxes + execute 1+1 ({n} samples)")
    pooled = Series("pooled", "first result, pool warm")
    out["pooled"] = {"available": False}
    try:
        gateway = Gateway(bench, "pool", pool_size=POOL_SIZE, extra=NO_LOAD_GUARD)
        await gateway.__aenter__()
    except ChildExited as exc:
        if "pool" in exc.tail.lower():
            log("  the gateway refuses --pool-size: no warm pool yet (n/a)")
            out["pooled"] = {"available": False,
                             "reason": "the gateway has no --pool-size (no warm pool yet)"}
            return
        raise
    not_refilled = 0
    sampler = GatewaySampler(gateway, pooled)
    deadline = time.monotonic() + budget + n * 5
    try:
        for i in range(n):
            if time.monotonic() > deadline:
                log(f"  time budget spent after {i} samples")
                break
            if await pool_full(gateway, 120) is None:
                not_refilled += 1
                log("  the pool did not refill within 120 s: sample skipped")
                continue
            await sampler.sample()
        health = await gateway.health()
    finally:
        await sampler.close()
        await gateway.close()
    out["pooled"] = {**pooled.to_dict(), "available": True, "pool": health.get("pool"),
                     "not_refilled": not_refilled}
    pool = health.get("pool") or {}
    log(f"  p50 {pooled.p50}  p99 {pooled.p99}  errors {pooled.errors}  "
        f"(claimed {pool.get('claimed')}, missed {pool.get('missed')})")


async def create_one(gateway: Gateway) -> tuple[str, float]:
    """One create of the burst on a connection of its own: (sandbox id, seconds)."""
    http = await gateway.connect()
    try:
        began = time.perf_counter()
        async with asyncio.timeout(BURST_TIMEOUT):
            sandbox = await clients.create_sandbox(http)
        return str(sandbox["id"]), time.perf_counter() - began
    finally:
        await http.close()


async def delete_all(gateway: Gateway, sandbox_ids: list[str]) -> None:
    http = await gateway.connect()
    try:
        for sandbox_id in sandbox_ids:
            try:
                await clients.delete_sandbox(http, sandbox_id)
            except Exception as exc:  # the gateway's close removes its containers anyway
                log(f"  could not delete {sandbox_id}: {exc}")
                await http.close()
                http = await gateway.connect()
    finally:
        await http.close()


async def run_burst(bench: Bench, out: dict[str, Any], count: int) -> None:
    """``count`` creates at once against a full warm pool; then the pool's refill time."""
    log(f"burst: {count} concurrent POST /sandboxes (--pool-size={POOL_SIZE}, the pool full before)")
    result: dict[str, Any] = {"sandboxes": count, "pool_size": POOL_SIZE}
    out["burst"] = result
    async with Gateway(bench, "burst", pool_size=POOL_SIZE, extra=NO_LOAD_GUARD) as gateway:
        if await pool_full(gateway, 120) is None:
            result["error"] = "the pool did not fill within 120 s"
            log(f"  {result['error']}")
            return
        began = time.perf_counter()
        outcomes = await asyncio.gather(*(create_one(gateway) for _ in range(count)), return_exceptions=True)
        wall = time.perf_counter() - began
        created = [o for o in outcomes if isinstance(o, tuple)]
        failed = [o for o in outcomes if not isinstance(o, tuple)]
        try:
            after = await gateway.health()
            refill_began = time.perf_counter()
            refilled = await pool_full(gateway, 120)
            refill = time.perf_counter() - refill_began if refilled is not None else None
            latencies = sorted(seconds for _, seconds in created)
            pool = after.get("pool") or {}
            result.update(
                seconds=wall, created=len(created), errors=len(failed),
                first_error=f"{type(failed[0]).__name__}: {failed[0]}"[:300] if failed else "",
                create_seconds=latencies, from_pool=pool.get("claimed"),
                refill_seconds=refill,
            )
            log(f"  {len(created)} created in {wall:.2f} s (slowest create {latencies[-1] if latencies else 0:.2f} s, "
                f"{pool.get('claimed')} from the pool), {len(failed)} failed; the pool full again "
                f"{'after %.2f s' % refill if refill is not None else 'not within 120 s'}")
        finally:
            await delete_all(gateway, [sandbox_id for sandbox_id, _ in created])


async def run(bench: Bench) -> None:
    n, budget = bench.n(30, 4), bench.n(300, 60)
    out: dict[str, Any] = {}
    bench.results["first_result"] = out

    log(f"first result, raw (our provisioner starts a container kernel, jupyter_client runs 1+1) and pool "
        f"off (POST /sandboxes + execute 1+1): {n} interleaved rounds")
    raw = Series("raw_start", "raw container start + 1+1")
    cold = Series("cold", "first result, pool off")
    await run_raw_and_cold(bench, raw, cold, n, budget)
    out["raw"], out["cold"] = raw.to_dict(), cold.to_dict()
    for series in (raw, cold):
        log(f"  {series.name}: p50 {series.p50}  p99 {series.p99}  errors {series.errors}")
    if raw.p50 and cold.p50:
        log(f"  cold / raw p50: {cold.p50 / raw.p50:.3f}")

    await run_pooled(bench, out, n, budget)
    await run_burst(bench, out, bench.n(BURST, 10))
