"""Round trip of ``1+1`` in a live kernel, through every method, interleaved sample by sample."""

from __future__ import annotations

import functools
import time

from bench.harness import Bench, cpu_seconds
from bench.measure import Series, log, sample_rounds
from bench.scenarios.live import LABELS, Live

CODE = "1+1"
#: Samples per method per round, the first thrown away (see ``sample_rounds``).
BURST = 4


async def run(bench: Bench, live: Live) -> None:
    n, warmup, budget = bench.n(100, 10), bench.n(10, 2), bench.n(240, 30)
    methods = {name: functools.partial(method, CODE, "2") for name, method in live.methods.items()}
    series = {name: Series(name, LABELS[name]) for name in methods}
    log(f"round trip of {CODE!r}: {n} interleaved rounds of {', '.join(methods)}, {BURST - 1} samples each "
        f"after one thrown away (after {warmup} warm-up rounds)")
    await sample_rounds(methods, series, n=n, warmup=warmup, budget=budget, burst=BURST)
    bench.results["roundtrip"] = {name: s.to_dict() for name, s in series.items()}
    for s in series.values():
        log(f"  {s.label:40s} p50 {s.p50 * 1e3 if s.p50 else float('nan'):7.2f} ms  "
            f"p99 {s.p99 * 1e3 if s.p99 else float('nan'):7.2f} ms  errors {s.errors}")
    bench.results["server_cpu"] = await server_cpu(live, bench.n(500, 100))


async def server_cpu(live: Live, count: int) -> dict[str, float]:
    """CPU time the server process (gateway or Kernel Gateway) spends per execution, method by method."""
    per: dict[str, float] = {}
    log(f"server CPU per execution: {count} executions of {CODE!r} per method, one method at a time")
    for name, pid in live.servers.items():
        method = live.methods[name]
        before, began = cpu_seconds(pid), time.perf_counter()
        for _ in range(count):
            await method(CODE, "2")
        per[name] = (cpu_seconds(pid) - before) / count
        log(f"  {LABELS[name]:40s} {per[name] * 1e6:6.0f} µs CPU per execution "
            f"({(time.perf_counter() - began) / count * 1e3:.2f} ms wall each)")
    return per
