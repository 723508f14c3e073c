"""Many sandboxes on one gateway: memory per idle sandbox, then 50 sandboxes x 20 executions all at once.

1. A fresh gateway (pool off) runs one sandbox a little and deletes it (lazy imports loaded), then
   its RSS is read: the 0-sandbox figure.
2. N sandboxes are created (a few at a time) and each runs ``1+1`` once; after a pause, RSS again:
   (RSS_N - RSS_0) / N is the gateway's memory per live sandbox. Each container's memory is read
   from its cgroup (usage minus inactive file pages, as ``docker stats``), and its containerd-shim's
   PSS, the host memory each container costs outside its cgroup.
3. All N sandboxes at once, each running 20 executions back to back over its own keep-alive
   connection: latency of every execution, throughput, errors (any non-completed execution, or a
   wrong result: each sandbox counts its executions in a variable, so a lost or reordered one shows).
4. Density: more idle sandboxes on the same gateway, up to ``BENCH_DENSITY`` in all (default 300;
   20 with ``--quick``), as many as the host's available memory allows with a reserve left, and
   created within ``DENSITY_SECONDS``. Each runs ``1+1`` once; then every container's working set
   (mean, p50, max), the gateway's RSS per sandbox and the host's ``MemAvailable`` drop per
   sandbox are measured with all of them up: what that many sandboxes really cost, not an
   extrapolation. All are deleted (and the harness removes whatever container the gateway left).
5. The same load as 3 on N raw container kernels driven by jupyter_client in this process: the
   baseline.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from bench import clients
from bench.harness import Bench, Gateway, RawKernels, container_memory, meminfo_kib, rss_kib, shim_pss_kib
from bench.measure import Series, log

COUNTER = "n = globals().get('n', 0) + 1\nn"
START_CONCURRENCY = 4
#: The density phase stops creating sandboxes after this long, and leaves this much memory free.
DENSITY_SECONDS = 420.0
DENSITY_RESERVE_KIB = 4 * 2**20
#: Host memory one more idle sandbox is assumed to take before any is measured (KiB).
DENSITY_GUESS_KIB = 64 * 1024


async def bounded(concurrency: int, coros: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def container_costs(bench: Bench, instance: str) -> dict[str, Any]:
    """Memory of every running container of ``instance``: cgroup working set, RSS, shim PSS (bytes)."""
    working, rss, shim = [], [], []
    for container in bench.containers(instance):
        container.reload()
        if container.status != "running":
            continue
        memory = container_memory(container.id)
        working.append(memory["working_set"])
        rss.append(memory["rss"])
        shim.append(shim_pss_kib(int(container.attrs["State"]["Pid"])) * 1024)
    count = len(working) or 1
    return {"containers": len(working), "working_set_mean": sum(working) / count,
            "working_set_p50": statistics.median(working) if working else 0,
            "working_set_max": max(working, default=0),
            "rss_mean": sum(rss) / count, "shim_pss_mean": sum(shim) / count}


async def drive(clients_: list[Any], executions: int, run_one: Any, series: Series) -> float:
    """Every client at once, each ``executions`` times back to back; returns the wall time."""
    async def loop(client: Any) -> None:
        for i in range(1, executions + 1):
            began = time.perf_counter()
            try:
                await run_one(client, str(i))
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
                continue
            series.add(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients_))
    return time.perf_counter() - began


async def run(bench: Bench) -> None:
    from bench.scenarios.live import pool_args

    count, executions = bench.n(50, 10), bench.n(20, 5)
    out: dict[str, Any] = {"sandboxes": count, "executions": executions}
    bench.results["scale"] = out

    async with Gateway(bench, "scale", **pool_args()) as gateway:
        http = await gateway.connect()
        warm = await clients.create_sandbox(http)
        for _ in range(5):
            await clients.rest_execute(http, warm["id"], "1+1")
        await clients.delete_sandbox(http, warm["id"])
        await asyncio.sleep(2)
        rss_0 = rss_kib(gateway.pid)
        log(f"scale: gateway RSS with 0 sandboxes {rss_0 / 1024:.1f} MiB; creating {count} sandboxes")

        began = time.perf_counter()
        created = await bounded(START_CONCURRENCY, [_create(gateway) for _ in range(count)])
        failures = [c for c in created if isinstance(c, BaseException)]
        ids = [c["id"] for c in created if not isinstance(c, BaseException)]
        out["create_seconds"] = time.perf_counter() - began
        out["create_errors"] = len(failures)
        if failures:
            log(f"  {len(failures)} sandbox(es) failed to start, first: {failures[0]}")
        log(f"  {len(ids)} sandboxes up in {out['create_seconds']:.1f} s; one 1+1 in each")
        for sid in ids:
            await clients.rest_execute(http, sid, "1+1")
        await asyncio.sleep(3)
        rss_n = rss_kib(gateway.pid)
        per = (rss_n - rss_0) / max(len(ids), 1)
        out["gateway_rss"] = {"idle_0_kib": rss_0, "idle_n_kib": rss_n, "per_sandbox_kib": per}
        out["containers"] = container_costs(bench, gateway.instance)
        log(f"  gateway RSS {rss_n / 1024:.1f} MiB with {len(ids)} idle sandboxes: "
            f"{per:.0f} KiB per sandbox; "
            f"container working set {out['containers']['working_set_mean'] / 2**20:.1f} MiB each, "
            f"shim {out['containers']['shim_pss_mean'] / 2**20:.1f} MiB")

        log(f"scale: {len(ids)} sandboxes x {executions} executions, all at once (REST, keep-alive)")
        connections = [await gateway.connect() for _ in ids]
        series = Series("gateway", f"gateway REST, {len(ids)} sandboxes at once")
        pairs = list(zip(connections, ids))

        async def one(pair: Any, expect: str) -> None:
            await clients.rest_execute(pair[0], pair[1], COUNTER, expect)

        wall = await drive(pairs, executions, one, series)
        for connection in connections:
            await connection.close()
        rss_after = rss_kib(gateway.pid)
        out["gateway"] = {**series.to_dict(), "wall_seconds": wall,
                          "throughput": len(series.samples) / wall, "rss_after_kib": rss_after,
                          "expected": len(ids) * executions}
        log(f"  {len(series.samples)} ok, {series.errors} errors in {wall:.1f} s: "
            f"{len(series.samples) / wall:.0f} executions/s, p50 {series.p50}, p99 {series.p99}"
            + (f"; first error: {series.first_error}" if series.errors else ""))
        log(f"  gateway RSS after: {rss_after / 1024:.1f} MiB")
        try:
            await density(bench, gateway, ids, rss_0, out)
        finally:
            log(f"  deleting the {len(ids)} sandboxes")
            await bounded(8, [_delete(gateway, sid) for sid in ids])
            await http.close()

    log(f"scale baseline: {count} raw container kernels x {executions} executions, all at once "
        "(jupyter_client)")
    async with RawKernels(bench) as raw:
        started = await bounded(START_CONCURRENCY, [raw.start() for _ in range(count)])
        kernels = [k for k in started if not isinstance(k, BaseException)]
        if len(kernels) < count:
            log(f"  only {len(kernels)} of {count} raw kernels started")
        for _, kc in kernels:
            await clients.raw_execute(kc, "1+1")
        await asyncio.sleep(3)
        out["raw_containers"] = container_costs(bench, raw.instance)
        series = Series("raw", f"raw jupyter_client, {len(kernels)} kernels at once")

        async def raw_one(kc: Any, expect: str) -> None:
            await clients.raw_execute(kc, COUNTER, expect)

        wall = await drive([kc for _, kc in kernels], executions, raw_one, series)
        out["raw"] = {**series.to_dict(), "wall_seconds": wall, "throughput": len(series.samples) / wall,
                      "expected": len(kernels) * executions}
        log(f"  {len(series.samples)} ok, {series.errors} errors in {wall:.1f} s: "
            f"{len(series.samples) / wall:.0f} executions/s, p50 {series.p50}, p99 {series.p99}")
        log("  stopping the raw kernels")
        await bounded(8, [raw.stop(kid) for kid, _ in kernels])

    out["mem_total_kib"] = meminfo_kib("MemTotal")


async def density(bench: Bench, gateway: Gateway, ids: list[str], rss_0: int, out: dict[str, Any]) -> None:
    """Idle sandboxes added to ``ids`` up to the density target; their measured cost in ``out["density"]``."""
    wanted = int(os.environ.get("BENCH_DENSITY") or bench.n(300, 20))
    if wanted < 1:
        raise ValueError(f"BENCH_DENSITY must be at least 1, not {wanted}")
    available_0 = meminfo_kib("MemAvailable")
    measured = out["containers"]["working_set_mean"] + out["containers"]["shim_pss_mean"]
    each_kib = max(DENSITY_GUESS_KIB, int(1.5 * measured / 1024 + out["gateway_rss"]["per_sandbox_kib"]))
    budget = len(ids) + max(0, (available_0 - DENSITY_RESERVE_KIB) // each_kib)
    target = min(wanted, budget)
    log(f"scale, density: up to {wanted} idle sandboxes (the memory budget allows {budget}: "
        f"{available_0 / 2**20:.1f} GiB available, {DENSITY_RESERVE_KIB / 2**20:.0f} GiB kept free, "
        f"{each_kib / 1024:.0f} MiB each); {len(ids)} already up")
    began = time.perf_counter()
    deadline = time.monotonic() + DENSITY_SECONDS
    errors: list[BaseException] = []
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one() -> None:
        async with gate:
            if time.monotonic() > deadline or errors:
                return
            connection = await gateway.connect()  # one each: a connection serves one request at a time
            try:
                sandbox = await clients.create_sandbox(connection)
                ids.append(sandbox["id"])
                await clients.rest_execute(connection, sandbox["id"], "1+1")
            except Exception as exc:  # the first error stops the phase: measure what is up
                errors.append(exc)
            finally:
                await connection.close()

    await asyncio.gather(*(one() for _ in range(max(0, target - len(ids)))))
    seconds = time.perf_counter() - began
    if errors:
        log(f"  stopped at {len(ids)} sandboxes by an error: {type(errors[0]).__name__}: {errors[0]}")
    elif len(ids) < target:
        log(f"  stopped at {len(ids)} sandboxes: {DENSITY_SECONDS:g} s spent")
    await asyncio.sleep(3)
    rss = rss_kib(gateway.pid)
    containers = container_costs(bench, gateway.instance)
    available = meminfo_kib("MemAvailable")
    added = max(len(ids) - out["containers"]["containers"], 1)
    result = {"wanted": wanted, "budget": budget, "sandboxes": len(ids), "seconds": seconds,
              "error": f"{type(errors[0]).__name__}: {errors[0]}" if errors else None,
              "containers": containers, "gateway_rss_kib": rss,
              "gateway_rss_per_sandbox_kib": (rss - rss_0) / max(len(ids), 1),
              "host_available_drop_per_added_kib": (available_0 - available) / added}
    out["density"] = result
    log(f"  {len(ids)} idle sandboxes up ({seconds:.0f} s to add {added}): container working set "
        f"{containers['working_set_mean'] / 2**20:.1f} MiB mean, {containers['working_set_p50'] / 2**20:.1f} p50, "
        f"{containers['working_set_max'] / 2**20:.1f} max; shim {containers['shim_pss_mean'] / 2**20:.1f} MiB; "
        f"gateway RSS {rss / 1024:.0f} MiB = {result['gateway_rss_per_sandbox_kib']:.0f} KiB per sandbox; "
        f"host MemAvailable {result['host_available_drop_per_added_kib'] / 1024:.1f} MiB less per added sandbox")


async def _create(gateway: Gateway) -> dict[str, Any]:
    http = await gateway.connect()
    try:
        return await clients.create_sandbox(http)
    finally:
        await http.close()


async def _delete(gateway: Gateway, sandbox_id: str) -> None:
    http = await gateway.connect()
    try:
        await clients.delete_sandbox(http, sandbox_id)
    finally:
        await http.close()
