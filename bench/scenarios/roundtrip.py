"""Round trip of ``1+1`` in a live kernel, through every method, interleaved sample by sample."""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path

from bench.harness import Bench
from bench.measure import Series, log, sample_rounds
from bench.scenarios.live import LABELS, Live

CODE = "1+1"
#: Samples per method per round, the first thrown away (see ``sample_rounds``).
BURST = 4
#: Turns each method takes in the server CPU measurement (its executions split between them).
CPU_TURNS = 10


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


def thread_cpu_seconds(pid: int) -> float:
    """CPU time the threads of a process have used so far, to the nanosecond (``schedstat``: the
    clock-tick figures of ``/proc/PID/stat`` are 10 ms coarse, too coarse for one turn)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that just ended
            continue
    return total / 1e9


async def server_cpu(live: Live, count: int) -> dict[str, float]:
    """CPU time the server process (gateway or Kernel Gateway) spends per execution, method by method.

    Interleaved like the round trips: ``CPU_TURNS`` rounds, each giving every method (in a
    shuffled order) a turn of ``count / CPU_TURNS`` executions, so load that comes and goes on
    a shared machine weighs on every method alike, not on whichever was measured then.
    """
    used = dict.fromkeys(live.servers, 0.0)
    wall = dict.fromkeys(live.servers, 0.0)
    turn = max(1, count // CPU_TURNS)
    log(f"server CPU per execution: {turn * CPU_TURNS} executions of {CODE!r} per method, "
        f"in {CPU_TURNS} interleaved turns of {turn}")
    order = list(live.servers)
    shuffle = random.Random(15)
    for _ in range(CPU_TURNS):
        shuffle.shuffle(order)
        for name in order:
            pid, method = live.servers[name], live.methods[name]
            before, began = thread_cpu_seconds(pid), time.perf_counter()
            for _ in range(turn):
                await method(CODE, "2")
            used[name] += thread_cpu_seconds(pid) - before
            wall[name] += time.perf_counter() - began
    per = {name: seconds / (turn * CPU_TURNS) for name, seconds in used.items()}
    for name in live.servers:
        log(f"  {LABELS[name]:40s} {per[name] * 1e6:6.0f} µs CPU per execution "
            f"({wall[name] / (turn * CPU_TURNS) * 1e3:.2f} ms wall each)")
    return per
