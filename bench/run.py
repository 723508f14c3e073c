"""``make bench``: every scenario, one table; writes bench/results/{latest.json,latest.md,latency.png}.

    .venv/bin/python -m bench.run                 # the full run (several minutes)
    .venv/bin/python -m bench.run --quick         # a smoke run: few samples, 10 sandboxes
    .venv/bin/python -m bench.run --only roundtrip,png

Everything is started here and stopped at the end, also on failure: the gateways (child processes
on free loopback ports, each with its own data directory), Jupyter Kernel Gateway (its own venv,
``bench/.venv-kg``, made on first use) and the raw container kernels. Run it on a quiet machine:
the table records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import REPO, Bench, dump_json, ensure_kg_venv, meminfo_kib
from bench.measure import loadavg, log
from bench.scenarios import big, first_result, isolation, pause, png, replicas, roundtrip, scale, under_load
from bench.scenarios.live import Live

SCENARIOS = ("roundtrip", "png", "big", "first_result", "scale", "under_load", "pause", "isolation", "replicas")
RESULTS = REPO / "bench" / "results"


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "kernels"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": meminfo_kib("MemTotal") / 2**20,
            "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit + ("+dirty" if dirty else "")}


async def run(bench: Bench) -> None:
    wanted = [s for s in SCENARIOS if not bench.only or s in bench.only]
    if {"roundtrip", "png", "big"} & set(wanted):
        async def live_scenarios() -> None:
            async with Live(bench) as live:
                for name, module in (("roundtrip", roundtrip), ("png", png), ("big", big)):
                    if name in wanted:
                        await guarded(bench, name, module.run(bench, live))

        await guarded(bench, "live setup", live_scenarios())
    if "first_result" in wanted:
        await guarded(bench, "first_result", first_result.run(bench))
    if "scale" in wanted:
        await guarded(bench, "scale", scale.run(bench))
    if "under_load" in wanted:
        await guarded(bench, "under_load", under_load.run(bench))
    if "pause" in wanted:
        await guarded(bench, "pause", pause.run(bench))
    if "isolation" in wanted:
        await guarded(bench, "isolation", isolation.run(bench))
    if "replicas" in wanted:
        await guarded(bench, "replicas", replicas.run(bench))


async def guarded(bench: Bench, name: str, coro: Any) -> None:
    """A failing scenario is reported in the results; the others still run. Load is noted around each."""
    before = loadavg()[0]
    try:
        await coro
    except Exception as exc:
        log(f"scenario {name} FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        bench.results.setdefault("failures", {})[name] = f"{type(exc).__name__}: {exc}"
    finally:
        bench.results.setdefault("load", {})[name] = [before, loadavg()[0]]
        log(f"  (1-min load average {before:.2f} before {name}, {loadavg()[0]:.2f} after)")


def header(meta: dict[str, Any], results: dict[str, Any]) -> str:
    m = meta["machine"]
    loads = [v for pair in (results.get("load") or {}).values() for v in pair]
    during = max([meta["load_before"][0], meta["load_after"][0], *loads])
    kind = "quick smoke run" if meta["quick"] else "full run"
    return (f"{meta['finished']} · {kind} · commit {m['commit']} · "
            f"{m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']:.1f} GiB · 1-min load average "
            f"{meta['load_before'][0]:.2f} before, up to {during:.2f} during, "
            f"{meta['load_after'][0]:.2f} after · "
            f"{meta['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with few samples")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--no-write", action="store_true", help="print the table only (no results files)")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    ensure_kg_venv()
    bench = Bench(quick=args.quick, only=only)
    load_before = loadavg()
    log(f"bench {'(quick) ' if args.quick else ''}run {bench.run_id}: load average {load_before}; "
        f"tmp {bench.tmp}")
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        asyncio.run(run(bench))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        bench.cleanup()
    finished = datetime.datetime.now(datetime.timezone.utc)
    meta = {"quick": args.quick, "started": started.isoformat(timespec="seconds"),
            "finished": finished.strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": (finished - started).total_seconds(),
            "load_before": load_before, "load_after": loadavg(), "machine": machine(),
            "argv": sys.argv[1:]}
    rows = report.table_rows(bench.results)
    table = report.markdown(rows)
    print()
    print(header(meta, bench.results))
    print()
    print(table)
    failures = bench.results.get("failures") or {}
    for name, reason in failures.items():
        print(f"\nscenario {name} failed: {reason}")
    if not args.no_write:
        dump_json(RESULTS / "latest.json", {"meta": meta, "results": bench.results})
        notes = "\n".join(f"- scenario `{n}` failed: {r}" for n, r in failures.items())
        (RESULTS / "latest.md").write_text(
            f"{header(meta, bench.results)}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
            + f"\n{report.NOTES}")
        report.chart(bench.results, RESULTS / "latency.png")
        log(f"wrote {RESULTS.relative_to(REPO)}/latest.json, latest.md, latency.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
