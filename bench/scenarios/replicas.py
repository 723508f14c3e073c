"""Replicas: create and execute throughput with one gateway replica against three on this machine, and
the failover time when the replica holding a sandbox is SIGKILLed.

Every gateway here shares one throwaway PostgreSQL 15 (``deploy/host/ensure-postgres.sh start``, a
fresh database per measurement) and the one Docker engine; the pool is off (creates are cold).

1. Creates: ``N`` sandboxes made ``CONCURRENCY`` at a time, all through one replica, then the same
   spread round-robin over three replicas: sandboxes per second (the baseline: one replica).
2. Executes: the N sandboxes each run ``E`` executions back to back, all at once, each over its own
   keep-alive connection, as above: through one replica; through three, each request to the replica
   holding its sandbox; through three, each request to the next replica of the sandbox's holder
   (every one forwarded). Executions per second, and per-execution latency.
3. Failover: a sandbox with ``x = 41`` on replica 0, SIGKILL it, and at once ask replica 1 for
   ``x + 1``: the time until the answer (42, from the same kernel) — that request waits for the
   lease to lapse and the take-over — against the lease timeout itself; ``T`` trials, replica 0
   started again between them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import clients
from bench.harness import REPO, Bench, Gateway, free_port
from bench.measure import Series, log
from bench.scenarios.scale import _delete, bounded

POSTGRES = REPO / "deploy" / "host" / "ensure-postgres.sh"
CONCURRENCY = 4
LEASE_TIMEOUT = 5.0
COUNTER = "n = globals().get('n', 0) + 1\nn"


class Postgres:
    """A PostgreSQL server of this run; ``database()`` makes an empty database on it."""

    def __init__(self, bench: Bench) -> None:
        # Not under the run's directory: that is root's alone, and the server runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="code-gateway-bench-pg-"))
        self.port = free_port()

    def __enter__(self) -> Postgres:
        subprocess.run(["bash", str(POSTGRES), "start", str(self.directory), str(self.port)], check=True,
                       capture_output=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(["bash", str(POSTGRES), "stop", str(self.directory)], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["/usr/lib/postgresql/15/bin/createdb", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def replica(bench: Bench, role: str, url: str) -> Gateway:
    return Gateway(bench, role, pool_size=0, extra=[f"--store-url={url}", f"--lease-timeout={LEASE_TIMEOUT:g}"])


async def creates(replicas: list[Gateway], count: int) -> tuple[list[tuple[str, int]], float]:
    """``count`` sandboxes made round-robin through ``replicas``: (id, index of its replica), wall seconds."""
    async def one(index: int) -> tuple[str, int]:
        http = await replicas[index].connect()
        try:
            return (await clients.create_sandbox(http))["id"], index
        finally:
            await http.close()

    began = time.perf_counter()
    made = await bounded(CONCURRENCY, [one(i % len(replicas)) for i in range(count)])
    wall = time.perf_counter() - began
    failed = [m for m in made if isinstance(m, BaseException)]
    if failed:
        log(f"  {len(failed)} creates failed, first: {failed[0]}")
    return [m for m in made if not isinstance(m, BaseException)], wall


async def executes(replicas: list[Gateway], sandboxes: list[tuple[str, int]], executions: int, shift: int,
                   label: str) -> dict[str, Any]:
    """Every sandbox runs ``executions`` counted executions at once, through replica (holder + shift)."""
    series = Series(label, label)
    connections = [await replicas[(index + shift) % len(replicas)].connect() for _, index in sandboxes]
    # Each sandbox counts its executions: a lost or reordered one would show as a wrong result.
    start = [int((await clients.rest_execute(http, sid, COUNTER, None))["result"]["text/plain"])
             for http, (sid, _) in zip(connections, sandboxes)]

    async def loop(http: clients.HttpConnection, sandbox_id: str, first: int) -> None:
        for i in range(first + 1, first + executions + 1):
            began = time.perf_counter()
            try:
                await clients.rest_execute(http, sandbox_id, COUNTER, str(i))
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
                continue
            series.add(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(loop(http, sid, n) for http, (sid, _), n in zip(connections, sandboxes, start)))
    wall = time.perf_counter() - began
    for http in connections:
        await http.close()
    result = {**series.to_dict(), "wall_seconds": wall, "throughput": len(series.samples) / wall}
    log(f"  {label}: {result['throughput']:.0f} executions/s, p50 {series.p50}, p99 {series.p99}"
        + (f", {series.errors} errors (first: {series.first_error})" if series.errors else ""))
    return result


async def throughput(bench: Bench, postgres: Postgres, out: dict[str, Any]) -> None:
    count, executions = bench.n(30, 6), bench.n(20, 5)
    out.update(sandboxes=count, executions=executions)
    for size in (1, 3):
        url = postgres.database()
        replicas = [replica(bench, f"replicas{size}-{n}", url) for n in range(size)]
        for r in replicas:
            await r.__aenter__()
        try:
            log(f"replicas: {count} creates, {CONCURRENCY} at a time, through {size} replica(s)")
            made, wall = await creates(replicas, count)
            out[f"create_{size}"] = {"made": len(made), "wall_seconds": wall, "per_second": len(made) / wall}
            log(f"  {len(made)} sandboxes in {wall:.1f} s: {len(made) / wall:.2f}/s")
            out[f"execute_{size}"] = await executes(replicas, made, executions, 0,
                                                    f"{size} replica(s), requests to the holder")
            if size > 1:
                out[f"execute_{size}_forwarded"] = await executes(
                    replicas, made, executions, 1, f"{size} replicas, every request forwarded")
            await bounded(8, [_delete(replicas[index], sid) for sid, index in made])
        finally:
            for r in replicas:
                await r.close()


async def failover(bench: Bench, postgres: Postgres, out: dict[str, Any]) -> None:
    trials = bench.n(5, 2)
    url = postgres.database()
    first, second = replica(bench, "failover-0", url), replica(bench, "failover-1", url)
    await second.__aenter__()
    series = Series("failover", f"SIGKILL the holder, then x + 1 through another replica (lease timeout "
                    f"{LEASE_TIMEOUT:g} s)")
    try:
        for trial in range(trials):
            await first.__aenter__()
            on_first, on_second = await first.connect(), await second.connect()
            sandbox = await clients.create_sandbox(on_first)
            await clients.rest_execute(on_first, sandbox["id"], "x = 41", None)
            await on_first.close()
            first.child.process.kill()  # type: ignore[union-attr]
            first.child.process.wait()  # type: ignore[union-attr]
            began = time.perf_counter()
            try:
                await clients.rest_execute(on_second, sandbox["id"], "x + 1", "42")
                series.add(time.perf_counter() - began)
            except Exception as exc:
                series.fail(f"{type(exc).__name__}: {exc}")
            log(f"  failover trial {trial + 1}: {series.samples[-1] if series.samples else 'failed'}")
            await _delete(second, sandbox["id"])
            await on_second.close()
    finally:
        await first.close()
        await second.close()
    out["failover"] = {**series.to_dict(), "lease_timeout": LEASE_TIMEOUT}


async def run(bench: Bench) -> None:
    out: dict[str, Any] = {}
    bench.results["replicas"] = out
    with Postgres(bench) as postgres:
        await throughput(bench, postgres, out)
        log("replicas: failover")
        await failover(bench, postgres, out)
