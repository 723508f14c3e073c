"""Under load (issue 15, target 5): ``1+1`` over REST in one sandbox while N other sandboxes stream
output, against the same with nothing else running, measured in the same run.

One gateway (pool off) holds the measured sandbox and N streamers (``BENCH_STREAMERS``, default 50;
5 with ``--quick``). After a warm-up (executions of ``1+1`` and a short stream of every streamer,
thrown away), rounds alternate two phases, in ABBA order so that a drift in the machine's load hits
both alike:

- *loaded*: every streamer runs one execution printing 1 KiB lines, each flushed (a stream message
  each), every ``INTERVAL`` seconds: ~20 lines/s for ``WINDOW + MARGIN`` seconds, at most ``RATE``
  times that many lines, and it stops at its deadline whatever happens. Each is watched live over
  its own NDJSON stream by a child process (``python -m bench.scenarios.under_load PORT KEY ID…``),
  so reading N streams does not share the measuring client's event loop. ``1+1`` is sampled back
  to back from when every streamer's first output has arrived until ``WINDOW`` seconds later or
  the first streamer ends, whichever comes first: every loaded sample began while all N streamed;
- *unloaded*: once every stream has ended, ``1+1`` is sampled back to back for ``WINDOW`` seconds.

Every sample checks that the answer is ``2``; every streamer's execution is checked (completed,
not truncated, its stdout exactly the lines it says it printed). The 1-min load average and the
gateway's CPU use are recorded per phase. Every sandbox is deleted at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import clients
from bench.harness import REPO, Bench, Gateway, container_cpu_seconds, cpu_seconds
from bench.measure import Series, cpu_jiffies, fmt_seconds, fmt_shares, loadavg, log, timed
from bench.scenarios.live import pool_args
from bench.scenarios.scale import _create, _delete, bounded

LINE = 1024
INTERVAL = 0.05
RATE = 1 / INTERVAL
WINDOW = 20
#: Streamers run this much longer than the window: it opens only once the last of them has started.
MARGIN = 5.0
#: The unmeasured stream of every streamer before the first round (more than its start takes).
WARM_SECONDS = 8.0
STREAMER = f"""
import time
_line, _end, _n = 'x' * {LINE - 1}, time.monotonic() + {{seconds}}, 0
while _n < {{lines}} and time.monotonic() < _end:
    print(_line, flush=True)
    _n += 1
    time.sleep({INTERVAL})
_n
"""
CODE = "1+1"


def streamer_code(seconds: float) -> str:
    return STREAMER.format(seconds=seconds, lines=int(RATE * seconds))


def streamed_lines(execution: dict[str, Any]) -> int:
    """The lines a streamer's execution printed, once checked against what it says it printed."""
    clients.check_completed(execution, None)
    lines = int(execution["result"]["text/plain"])
    if execution.get("truncated") or execution["stdout"] != ("x" * (LINE - 1) + "\n") * lines:
        raise RuntimeError(f"a streamer said it printed {lines} lines, its stdout holds "
                           f"{len(execution['stdout'])} characters (truncated: {execution.get('truncated')})")
    return lines


async def stream_all(port: int, key: str, ids: list[str], seconds: float) -> None:
    """The child process: one NDJSON stream per streamer, its events as JSON lines on stdout.

    ``streaming`` once every stream has shown output; ``ending`` when the first one ends; ``done``
    with each stream's line count (or its error) when all have ended.
    """
    def emit(event: str, **more: Any) -> None:
        print(json.dumps({"event": event, **more}), flush=True)

    started: set[str] = set()
    ended: list[str] = []

    async def one(sandbox_id: str) -> int:
        def chunk(data: clients.Body) -> None:
            if sandbox_id not in started and b'"output"' in data:
                started.add(sandbox_id)
                if len(started) == len(ids):
                    emit("streaming")

        http = await clients.HttpConnection.open(port, {"Authorization": f"Bearer {key}"})
        try:
            execution = await clients.ndjson_execute(http, sandbox_id, streamer_code(seconds), None,
                                                     timeout=seconds + 60, on_chunk=chunk)
        finally:
            await http.close()
            ended.append(sandbox_id)
            if len(ended) == 1:
                emit("ending")
        return streamed_lines(execution)

    results = await asyncio.gather(*(one(sandbox_id) for sandbox_id in ids), return_exceptions=True)
    emit("done", lines=[r for r in results if isinstance(r, int)],
         errors=[f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)])


class Phases:
    """The measured sandbox, the streamers and the two series; one method per kind of phase."""

    def __init__(self, gateway: Gateway, http: clients.HttpConnection, measured: str, streamers: list[str],
                 seconds: float, window: float) -> None:
        self.gateway, self.http, self.measured, self.streamers = gateway, http, measured, streamers
        self.seconds, self.window = seconds, window
        self.containers = [gateway.bench.docker.containers.get(f"code-gateway-{sid}").id for sid in streamers]
        self.series = {"loaded": Series("loaded", f"REST execute, {len(streamers)} others streaming"),
                       "unloaded": Series("unloaded", "REST execute, nothing else running")}
        self.phases: list[dict[str, Any]] = []
        self.lines: list[int] = []

    async def once(self) -> None:
        await clients.rest_execute(self.http, self.measured, CODE, "2")

    def cpu(self, watcher: int | None) -> dict[str, float]:
        """CPU seconds so far of the gateway, the streamers' containers and the process watching them."""
        used = {"gateway": cpu_seconds(self.gateway.pid),
                "streamers": sum(container_cpu_seconds(c) for c in self.containers)}
        return {**used, "watcher": cpu_seconds(watcher)} if watcher else used

    async def sample(self, kind: str, stop: asyncio.Future[Any] | None = None,
                     watcher: int | None = None) -> None:
        """``1+1`` back to back for the window (or until ``stop`` is done), with the phase's load and CPU
        use: each party's (share of one core) and the machine's (busy share of all its cores)."""
        series, count = self.series[kind], len(self.series[kind].samples)
        load, cpu, machine = loadavg()[0], self.cpu(watcher), cpu_jiffies()
        began = time.monotonic()
        deadline = began + self.window
        while time.monotonic() < deadline and not (stop is not None and stop.done()):
            await timed(series, self.once)
        wall, busy = time.monotonic() - began, [b - a for a, b in zip(machine, cpu_jiffies())]
        mine = Series(kind, kind, series.samples[count:])
        phase: dict[str, Any] = {
            "kind": kind, "seconds": wall, "samples": len(mine.samples), "p50": mine.p50, "p99": mine.p99,
            "load": [load, loadavg()[0]], "machine_busy": busy[0] / max(busy[1], 1),
            "cpu": {name: (seconds - cpu[name]) / wall for name, seconds in self.cpu(watcher).items()}}
        self.phases.append(phase)
        log(f"  {kind:8s} {phase['samples']:5d} samples in {wall:4.1f} s: p50 {fmt_seconds(mine.p50)}, p99 "
            f"{fmt_seconds(mine.p99)}; CPU {fmt_shares(phase['cpu'])}, machine {phase['machine_busy']:.0%} "
            f"busy, load {load:.2f} -> {phase['load'][1]:.2f}")

    async def loaded(self) -> None:
        self.lines.extend(await self.stream(self.seconds,
                                            lambda ending, pid: self.sample("loaded", ending, pid)))

    async def warm(self) -> None:
        """Every streamer streams briefly, unmeasured: a sandbox's first stream pays for setting it up."""
        await self.stream(WARM_SECONDS, lambda ending, pid: asyncio.wait([ending]))

    async def stream(self, seconds: float,
                     during: Callable[[asyncio.Future[Any], int], Awaitable[Any]]) -> list[int]:
        """Every streamer streams for ``seconds``; ``during(ending, watcher_pid)`` once all of them stream
        (``ending``: done when the first stream ends). Returns each stream's line count."""
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scenarios.under_load", str(self.gateway.port), Gateway.KEY,
            str(seconds), *self.streamers, stdout=asyncio.subprocess.PIPE, cwd=str(REPO))
        assert child.stdout is not None
        stdout = child.stdout

        async def event() -> dict[str, Any]:
            line = await asyncio.wait_for(stdout.readline(), seconds + 120)
            if not line:
                raise RuntimeError(f"the streaming process exited ({await child.wait()}) early")
            return json.loads(line)  # type: ignore[no-any-return]

        try:
            first = await event()
            if first["event"] != "streaming":
                raise RuntimeError(f"a stream ended before all {len(self.streamers)} streamed: {first}")
            ending = asyncio.ensure_future(event())
            try:
                await during(ending, child.pid)
                while (await ending)["event"] != "done":
                    ending = asyncio.ensure_future(event())
                done = ending.result()
            finally:
                ending.cancel()
            if done["errors"]:
                raise RuntimeError(f"{len(done['errors'])} streamer(s) failed, first: {done['errors'][0]}")
            await child.wait()
            return done["lines"]  # type: ignore[no-any-return]
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()


async def run(bench: Bench) -> None:
    count = int(os.environ.get("BENCH_STREAMERS") or bench.n(50, 5))
    if count < 1:
        raise ValueError(f"BENCH_STREAMERS must be at least 1, not {count}")
    rounds, warmup, window = bench.n(3, 1), bench.n(30, 5), bench.n(WINDOW, 5)
    seconds = window + MARGIN
    async with Gateway(bench, "under_load", **pool_args()) as gateway:
        http = await gateway.connect()
        ids: list[str] = []
        try:
            log(f"under load: creating {count + 1} sandboxes")
            created = await bounded(4, [_create(gateway) for _ in range(count + 1)])
            ids = [c["id"] for c in created if not isinstance(c, BaseException)]
            failures = [c for c in created if isinstance(c, BaseException)]
            if failures:
                raise RuntimeError(f"{len(failures)} sandbox(es) did not start, first: {failures[0]}")
            measured, streamers = ids[0], ids[1:]
            phases = Phases(gateway, http, measured, streamers, seconds, window)
            await bounded(4, [_prepare(gateway, sandbox_id) for sandbox_id in ids])
            for _ in range(warmup):
                await phases.once()
            await phases.warm()
            log(f"under load: {rounds} rounds of {window:g} s loaded ({count} sandboxes streaming "
                f"{LINE} B lines at ~{RATE:g}/s for {seconds:g} s) and {window:g} s unloaded, ABBA")
            for i in range(rounds):
                for kind in ("loaded", "unloaded") if i % 2 == 0 else ("unloaded", "loaded"):
                    await (phases.loaded() if kind == "loaded" else phases.sample("unloaded"))
        finally:
            await http.close()
            log(f"under load: deleting {len(ids)} sandboxes")
            await bounded(8, [_delete(gateway, sandbox_id) for sandbox_id in ids])
    out: dict[str, Any] = {
        "streamers": count, "window": window, "stream_seconds": seconds, "phases": phases.phases,
        "lines_per_second": sum(phases.lines) / max(len(phases.lines), 1) / seconds,
        **{kind: s.to_dict() for kind, s in phases.series.items()}}
    bench.results["under_load"] = out
    for kind in phases.series:
        s = out[kind]
        log(f"  {s['label']:40s} p50 {fmt_seconds(s['p50'])}  p99 {fmt_seconds(s['p99'])}  n {s['n']}  "
            f"errors {s['errors']}")
    log(f"  each streamer printed {out['lines_per_second']:.1f} lines/s")


async def _prepare(gateway: Gateway, sandbox_id: str) -> None:
    """A first, untimed ``1+1`` in a sandbox, so no phase pays for a kernel's first execution."""
    http = await gateway.connect()
    try:
        await clients.rest_execute(http, sandbox_id, CODE)
    finally:
        await http.close()


if __name__ == "__main__":
    asyncio.run(stream_all(int(sys.argv[1]), sys.argv[2], sys.argv[4:], float(sys.argv[3])))
