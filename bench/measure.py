"""Samples, percentiles and bounded sampling loops.

    series = Series("rest", "REST execute")
    await sample_rounds({"rest": rest_once, "raw": raw_once}, series_by_name, n=300, warmup=30, budget=60)
    series.p50, series.p99           # seconds
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


def log(message: str) -> None:
    """One progress line, stamped with the time since the run started."""
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


STARTED = time.monotonic()


@dataclasses.dataclass
class Series:
    """Latency samples (seconds) of one method, and the failures met while taking them."""

    name: str
    label: str
    samples: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def fail(self, reason: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = reason[:300]

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.samples, q)) if self.samples else None

    @property
    def p50(self) -> float | None:
        return self.percentile(50)

    @property
    def p99(self) -> float | None:
        return self.percentile(99)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "n": len(self.samples), "p50": self.p50,
                "p99": self.p99, "mean": float(np.mean(self.samples)) if self.samples else None,
                "errors": self.errors, "first_error": self.first_error, "samples": self.samples}


async def timed(series: Series, once: Callable[[], Awaitable[Any]]) -> None:
    """Run ``once`` and add its duration to ``series`` (or count its failure)."""
    began = time.perf_counter()
    try:
        await once()
    except Exception as exc:  # counted and reported, never hidden
        series.fail(f"{type(exc).__name__}: {exc}")
        return
    series.add(time.perf_counter() - began)


async def sample_rounds(methods: dict[str, Callable[[], Awaitable[Any]]], series: dict[str, Series], *,
                        n: int, warmup: int, budget: float, burst: int = 1) -> None:
    """Interleave the methods (a turn of each per round), so load drifts hit them all alike.

    The order within each round is shuffled (seeded, so runs are comparable): in a fixed order the
    method that follows another server's turn always pays for waking its own process up. With
    ``burst`` > 1 a turn is ``burst`` samples in a row and its first is thrown away: what is
    measured is each method warm, as under steady use, not its processes waking from sleep on a
    2-core machine shared with six other methods' servers. Every method is treated alike.
    ``warmup`` rounds are run and thrown away; then up to ``n`` rounds, or fewer if ``budget``
    seconds run out.
    """
    order = random.Random(1234)
    for _ in range(warmup):
        for once in methods.values():
            try:
                await once()
            except Exception:
                pass
    deadline = time.monotonic() + budget
    for _ in range(n):
        if time.monotonic() > deadline:
            rounds = len(next(iter(series.values())).samples)
            log(f"  time budget ({budget:g} s) spent: stopping at {rounds} rounds")
            break
        names = list(methods)
        order.shuffle(names)
        for name in names:
            if burst > 1:
                await timed(Series("discarded", "discarded"), methods[name])
            for _ in range(max(burst - 1, 1)):
                await timed(series[name], methods[name])


def fmt_seconds(seconds: float | None) -> str:
    """``0.00123`` -> ``1.23 ms``; ``1.5`` -> ``1.50 s``."""
    if seconds is None:
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_shares(shares: dict[str, float]) -> str:
    """``{"gateway": 0.21}`` -> ``gateway 21%``: CPU used per second, as a share of one core."""
    return ", ".join(f"{name} {share * 100:.0f}%" for name, share in shares.items())


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, all cores, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)
