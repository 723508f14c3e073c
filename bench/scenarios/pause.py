"""Pause and resume: how long each takes, and how many paused sandboxes one machine keeps.

1. Timing, on a gateway with the pool off: each sample makes a sandbox with a small state (an int,
   a 1000-row DataFrame, a function, a 100 KiB file), then times ``POST …/pause`` and
   ``POST …/resume`` and checks the state came back. Baselines from the same run, interleaved
   sample by sample: ``DELETE`` of a like sandbox (what a pause does besides saving) against the
   pause, and ``POST /sandboxes`` (a cold start) against the resume (a cold start plus restoring).
   A second gateway with a warm pool of one times resumes that take a pooled container (each
   sample waits until the pool is full again).
2. Density: N sandboxes created and paused (a few at a time; ``BENCH_PAUSED`` sets N, default
   1000, 20 with ``--quick``), each with ``x = 41``: the gateway's disk per paused sandbox (its
   ``paused/`` directory), the gateway's RSS per paused sandbox, and how many would fit in the free
   disk. One of them is resumed at the end and checked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from bench import clients
from bench.harness import Bench, Gateway, rss_kib
from bench.measure import Series, log
from bench.scenarios.first_result import pool_full
from bench.scenarios.scale import bounded

STATE = ("import pandas as pd\nx = 41\ndf = pd.DataFrame({'a': range(1000), 'b': [str(i) for i in range(1000)]})\n"
         "def double(v):\n    return 2 * v\nopen('blob.bin', 'wb').write(bytes(range(256)) * 400)")
CHECK = "(double(x + 1) // 2, len(df), len(open('blob.bin', 'rb').read()))"
EXPECTED = "(42, 1000, 102400)"
ARGS = ["--max-paused-per-user=0", "--idle-timeout=86400"]


def directory_bytes(root: Path) -> tuple[int, int]:
    """(bytes in the files, bytes the filesystem allocated for them and their directories)."""
    entries = [path.lstat() for path in root.rglob("*")]
    return (sum(e.st_size for e in entries if stat.S_ISREG(e.st_mode)), sum(e.st_blocks * 512 for e in entries))


async def timing(bench: Bench, gateway: Gateway, out: dict[str, Any]) -> None:
    n = bench.n(30, 5)
    series = {name: Series(name, label) for name, label in (
        ("pause", "POST …/pause (small state)"), ("resume", "POST …/resume (small state)"),
        ("delete", "DELETE of a like sandbox"), ("create", "POST /sandboxes (cold start)"))}
    http = await gateway.connect()
    try:
        for i in range(n):
            paused = await clients.create_sandbox(http)
            await clients.rest_execute(http, paused["id"], STATE, expect=None)
            other = await clients.create_sandbox(http)
            await clients.rest_execute(http, other["id"], STATE, expect=None)
            for name, method, path, status in (
                    ("pause", "POST", f"/api/v1/sandboxes/{paused['id']}/pause", 200),
                    ("delete", "DELETE", f"/api/v1/sandboxes/{other['id']}", 204)):
                began = time.perf_counter()
                await http.json(method, path, expect=status)
                series[name].add(time.perf_counter() - began)
            began = time.perf_counter()
            fresh = await clients.create_sandbox(http)
            series["create"].add(time.perf_counter() - began)
            began = time.perf_counter()
            resumed = await http.json("POST", f"/api/v1/sandboxes/{paused['id']}/resume")
            series["resume"].add(time.perf_counter() - began)
            if resumed.get("status") != "running":
                series["resume"].fail(f"resume gave {resumed.get('status')}")
            await clients.rest_execute(http, paused["id"], CHECK, expect=EXPECTED)
            for sandbox_id in (paused["id"], fresh["id"]):
                await clients.delete_sandbox(http, sandbox_id)
            if i == 0:
                log(f"  first sample: pause {series['pause'].samples[-1]:.2f} s, "
                    f"resume {series['resume'].samples[-1]:.2f} s")
    finally:
        await http.close()
    for name, s in series.items():
        out[name] = s.to_dict()
        log(f"  {s.label}: p50 {s.p50}  p99 {s.p99}  errors {s.errors}")


async def pooled_resume(bench: Bench, gateway: Gateway, out: dict[str, Any]) -> None:
    """Resume with the warm pool full: each sample waits for the pool to refill first (bounded)."""
    n = bench.n(30, 5)
    series = Series("resume_pool", "POST …/resume, pool warm (small state)")
    http = await gateway.connect()
    try:
        for _ in range(n):
            sandbox = await clients.create_sandbox(http)
            await clients.rest_execute(http, sandbox["id"], STATE, expect=None)
            await http.json("POST", f"/api/v1/sandboxes/{sandbox['id']}/pause")
            if await pool_full(gateway, 120) is None:
                log("  the pool did not refill within 120 s: sample skipped")
                await clients.delete_sandbox(http, sandbox["id"])
                continue
            began = time.perf_counter()
            await http.json("POST", f"/api/v1/sandboxes/{sandbox['id']}/resume")
            series.add(time.perf_counter() - began)
            await clients.rest_execute(http, sandbox["id"], CHECK, expect=EXPECTED)
            await clients.delete_sandbox(http, sandbox["id"])
            await pool_full(gateway, 120)
    finally:
        await http.close()
    out["resume_pool"] = series.to_dict()
    log(f"  {series.label}: p50 {series.p50}  p99 {series.p99}  errors {series.errors}")


async def density(bench: Bench, gateway: Gateway, data_dir: Path, out: dict[str, Any]) -> None:
    count = int(os.environ.get("BENCH_PAUSED") or bench.n(1000, 20))
    http = await gateway.connect()
    try:
        warm = await clients.create_sandbox(http)
        await clients.rest_execute(http, warm["id"], "x = 41", expect=None)
        await http.json("POST", f"/api/v1/sandboxes/{warm['id']}/pause")
        await http.json("POST", f"/api/v1/sandboxes/{warm['id']}/resume")
        await clients.delete_sandbox(http, warm["id"])
    finally:
        await http.close()
    await asyncio.sleep(2)
    rss_0 = rss_kib(gateway.pid)
    log(f"paused density: creating and pausing {count} sandboxes (gateway RSS now {rss_0 / 1024:.1f} MiB)")

    async def one() -> str:
        connection = await gateway.connect()
        try:
            sandbox = await clients.create_sandbox(connection)
            await clients.rest_execute(connection, sandbox["id"], "x = 41", expect=None)
            paused = await connection.json("POST", f"/api/v1/sandboxes/{sandbox['id']}/pause")
            if paused.get("status") != "paused":
                raise RuntimeError(f"pause gave {paused.get('status')}")
            return str(sandbox["id"])
        finally:
            await connection.close()

    began = time.perf_counter()
    done = await bounded(4, [one() for _ in range(count)])
    ids = [d for d in done if isinstance(d, str)]
    errors = [d for d in done if not isinstance(d, str)]
    seconds = time.perf_counter() - began
    await asyncio.sleep(3)
    rss_n = rss_kib(gateway.pid)
    disk, allocated = directory_bytes(data_dir / "paused")
    free = shutil.disk_usage(data_dir).free
    per_disk = allocated / max(len(ids), 1)
    out.update(count=len(ids), errors=len(errors), seconds=seconds, disk_bytes=disk,
               saved_per_sandbox=disk / max(len(ids), 1), disk_per_sandbox=per_disk,
               rss_0_kib=rss_0, rss_n_kib=rss_n,
               rss_per_sandbox_kib=(rss_n - rss_0) / max(len(ids), 1), free_disk_bytes=free,
               fit_on_disk=int(free / per_disk) if per_disk else None)
    log(f"  {len(ids)} paused in {seconds:.0f} s ({len(errors)} errors{': ' + str(errors[0]) if errors else ''}); "
        f"{per_disk / 1024:.1f} KiB of disk each ({out['saved_per_sandbox']:.0f} bytes saved), gateway RSS {rss_n / 1024:.1f} MiB "
        f"({out['rss_per_sandbox_kib']:.1f} KiB each)")
    if ids:
        http = await gateway.connect()
        try:
            await http.json("POST", f"/api/v1/sandboxes/{ids[0]}/resume")
            await clients.rest_execute(http, ids[0], "x + 1", expect="42")
        finally:
            await http.close()


async def run(bench: Bench) -> None:
    out: dict[str, Any] = {}
    bench.results["pause"] = out
    async with Gateway(bench, "pause", pool_size=0, extra=ARGS) as gateway:
        log("pause and resume: small state, against delete and cold create")
        await timing(bench, gateway, out)
        density_out: dict[str, Any] = {}
        out["density"] = density_out
        await density(bench, gateway, bench.tmp / "pause" / "data", density_out)
    async with Gateway(bench, "pause-pool", pool_size=1,
                       extra=[*ARGS, "--WarmPool.max_load_per_core=1000"]) as gateway:
        log("resume with the warm pool full")
        await pooled_resume(bench, gateway, out)
