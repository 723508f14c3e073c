"""The one table (figures against their baselines and targets) and the latency chart.

    rows = table_rows(results)
    print(markdown(rows))
    chart(results, Path("bench/results/latency.png"))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench.measure import fmt_seconds, fmt_shares

#: Targets of issues 6 and 15, on a 2-core machine.
POOLED_P50 = 0.050
#: Cold first result against the raw container start + 1+1 of the same run; the raw start's own p50.
COLD_RATIO = 1.05
RAW_START_P50 = 0.600
#: Concurrent creates: all answered within this many seconds.
BURST_SECONDS = 10.0
#: An idle sandbox's container working set.
CONTAINER_MIB = 30.0
ROUNDTRIP_RATIO = 1.10
CPU_RATIO_TO_KG = 0.5
BIG_OUTPUT_RATIO = 1.15
GATEWAY_KIB_PER_SANDBOX = 1024
#: The big-output scenarios (results key, title); each: every gateway method ≤ 1.15× raw and faster than KG.
BIG_OUTPUTS = (("png", "2 MiB PNG relayed"), ("big_flood", "20 MiB stream flood relayed"),
               ("big_html", "10 MB HTML table relayed"))
GATEWAY_METHODS = ("rest", "ndjson", "ws", "jupyter_ws")


NOTES = """\
- **raw jupyter_client** (the floor): a kernel in the same hardened container, started by our provisioner
  (`KernelLauncher`) without the gateway, driven by one long-lived `AsyncKernelClient` in the harness.
- **Kernel Gateway 3** (`jupyter-kernel-gateway` 3.0.1 from PyPI, in `bench/.venv-kg`) runs its kernels as
  plain local processes (no container, TCP loopback). It leaves Nagle's algorithm on for its WebSocket
  (Tornado's default), so the second message of every execute waits ~40 ms for the client's delayed ACK;
  the `client TCP_QUICKACK` row is the same server with a client that acknowledges every message at once.
- Clients: a raw HTTP/1.1 keep-alive connection (REST, NDJSON) and `websockets` (every WebSocket), all in
  one asyncio process; every sample checks its result. Methods are sampled interleaved, one round at a time,
  after warm-up rounds. The gateway is the working tree's `code-gateway` as a child process (pool off except
  for the pooled first result), SQLite store in a temporary data directory.
- Server CPU: user+system CPU of the server process per execution, over a run of one method alone.
- Memory: gateway VmRSS with N idle sandboxes minus with none, over N; container memory is the cgroup's usage
  minus inactive file pages (as `docker stats`); the estimate divides total RAM by container + shim + gateway
  share. Memory limits are not reservations: the estimate is for idle sandboxes only.
"""


@dataclasses.dataclass
class Row:
    scenario: str
    method: str
    p50: str
    p99: str
    baseline: str
    target: str = "—"
    verdict: str = "—"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def vs(series: dict[str, Any], base: dict[str, Any] | None, name: str) -> str:
    if base is None or not series.get("n"):
        return "—"
    return f"{ratio(series['p50'], base['p50'])} / {ratio(series['p99'], base['p99'])} {name}"


def at_most(value: float | None, target: float) -> str:
    """``met`` or ``missed by X%``."""
    if value is None:
        return "n/a"
    if value <= target:
        return "met"
    return f"missed by {(value / target - 1) * 100:.0f}%"


def errors_note(series: dict[str, Any]) -> str:
    return f" ({series['errors']} errors)" if series.get("errors") else ""


def latency_row(scenario: str, series: dict[str, Any], baseline: str) -> Row:
    return Row(scenario, series["label"] + errors_note(series), fmt_seconds(series.get("p50")),
               fmt_seconds(series.get("p99")), baseline)


def table_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    first = results.get("first_result")
    if first:
        raw, cold, pooled = first.get("raw"), first.get("cold"), first.get("pooled") or {}
        title = "first result (create + 1+1)"
        if pooled.get("available"):
            row = latency_row(title, pooled, vs(pooled, cold, "pool off"))
            row.target, row.verdict = "p50 ≤ 50 ms", at_most(pooled["p50"], POOLED_P50)
            rows.append(row)
        else:
            rows.append(Row(title, "first result, pool warm", "n/a (no pool)", "n/a", "—", "p50 ≤ 50 ms",
                            "n/a"))
        if cold:
            row = latency_row(title, cold, vs(cold, raw, "raw start"))
            if raw and raw.get("p50") and cold.get("p50"):
                row.target = f"≤ {COLD_RATIO:.2f}× raw start"
                row.verdict = at_most(cold["p50"] / raw["p50"], COLD_RATIO)
            rows.append(row)
        if raw:
            row = latency_row(title, raw, "baseline")
            row.target, row.verdict = "p50 ≤ 600 ms", at_most(raw.get("p50"), RAW_START_P50)
            rows.append(row)
        rows.extend(burst_rows(first.get("burst")))

    roundtrip = results.get("roundtrip")
    if roundtrip:
        raw, kg = roundtrip.get("raw"), roundtrip.get("kg")
        for name, series in roundtrip.items():
            if name == "raw":
                continue
            row = latency_row("round trip of 1+1", series, vs(series, raw, "raw"))
            if name in ("rest", "ws") and raw and series.get("n"):
                row.target = f"≤ {ROUNDTRIP_RATIO:.2f}× raw, < KG"
                verdicts = [at_most(series["p50"] / raw["p50"], ROUNDTRIP_RATIO)]
                if kg and kg.get("n"):
                    faster = series["p50"] < kg["p50"]
                    verdicts.append(f"{'faster' if faster else 'slower'} than KG "
                                    f"({ratio(series['p50'], kg['p50'])})")
                kg_quick = roundtrip.get("kg_quickack")
                if kg_quick and kg_quick.get("n"):
                    verdicts.append(f"{ratio(series['p50'], kg_quick['p50'])} KG with quick ACKs")
                row.verdict = "; ".join(verdicts)
            elif name in ("kg", "kg_quickack"):
                row.method += " (local-process kernel)"
            elif name == "e2b":
                row.baseline = vs(series, roundtrip.get("rest"), "REST")
            rows.append(row)
        if raw:
            rows.append(latency_row("round trip of 1+1", raw, "baseline (floor)"))
    cpu = results.get("server_cpu") or {}
    kg_cpu = cpu.get("kg")
    for name, seconds in cpu.items():
        label = (roundtrip or {}).get(name, {}).get("label", name)
        row = Row("server CPU per 1+1", label, f"{seconds * 1e6:.0f} µs", "—",
                  f"{ratio(seconds, kg_cpu)} KG" if kg_cpu and name != "kg" else "—")
        if name == "rest" and kg_cpu:
            row.target, row.verdict = f"≤ {CPU_RATIO_TO_KG:g}× KG", at_most(seconds / kg_cpu, CPU_RATIO_TO_KG)
        rows.append(row)

    rows.extend(big_output_rows(results))

    scale = results.get("scale")
    if scale and scale.get("gateway"):
        gateway, raw = scale["gateway"], scale.get("raw")
        title = f"{scale['sandboxes']} sandboxes × {scale['executions']} executions at once"
        row = latency_row(title, gateway, vs(gateway, raw, "raw"))
        failed = max(gateway["errors"], gateway["expected"] - len(gateway["samples"]))
        errors = failed + scale.get("create_errors", 0)
        row.target = "no error"
        row.verdict = "met (0 errors)" if errors == 0 else f"missed: {errors} errors"
        rows.append(row)
        if raw:
            rows.append(latency_row(title, raw, "baseline"))
            versus = f"{gateway['throughput'] / raw['throughput']:.2f}× raw ({raw['throughput']:.0f}/s)"
            rows.append(Row(title, "throughput (executions/s)", f"{gateway['throughput']:.0f}/s", "—",
                            versus))
    if scale and scale.get("gateway_rss"):
        per = scale["gateway_rss"]["per_sandbox_kib"]
        with_none = f"{scale['gateway_rss']['idle_0_kib'] / 1024:.0f} MiB with none"
        rows.append(Row("memory", f"gateway RSS per live sandbox ({scale['sandboxes']} idle)",
                        f"{per:.0f} KiB", "—", with_none, "≤ 1 MiB",
                        at_most(per, GATEWAY_KIB_PER_SANDBOX)))
        containers, raw_containers = scale["containers"], scale.get("raw_containers") or {}
        raw_mean = raw_containers.get("working_set_mean")
        versus = (f"{ratio(containers['working_set_mean'], raw_mean)} raw kernel"
                  if raw_containers.get("containers") else "—")
        rows.append(Row("memory", "container per idle sandbox (cgroup working set)",
                        f"{containers['working_set_mean'] / 2**20:.1f} MiB", "—", versus, f"≤ {CONTAINER_MIB:g} MiB",
                        at_most(containers["working_set_mean"] / 2**20, CONTAINER_MIB)))
        rows.append(Row("memory", "containerd-shim per sandbox (PSS, outside the cgroup)",
                        f"{containers['shim_pss_mean'] / 2**20:.1f} MiB", "—", "—"))
        per_sandbox = containers["working_set_mean"] + containers["shim_pss_mean"] + max(per, 0) * 1024
        total = scale["mem_total_kib"] * 1024
        rows.append(Row("memory", "idle sandboxes that fit in RAM (estimate)",
                        f"≈ {int(total / per_sandbox)}", "—",
                        f"{total / 2**30:.1f} GiB / {per_sandbox / 2**20:.1f} MiB each"))
        rows.extend(density_rows(scale.get("density"), total))
    rows.extend(under_load_rows(results.get("under_load")))
    rows.extend(pause_rows(results.get("pause")))
    rows.extend(isolation_rows(results.get("isolation")))
    rows.extend(replica_rows(results.get("replicas")))
    return rows


def burst_rows(burst: dict[str, Any] | None) -> list[Row]:
    """Concurrent creates against a full warm pool: the last answer's time, and the pool's refill."""
    if not burst:
        return []
    title = f"{burst['sandboxes']} concurrent creates (pool of {burst['pool_size']})"
    if "seconds" not in burst:
        return [Row(title, "all answered", "n/a", "n/a", burst.get("error") or "—", f"≤ {BURST_SECONDS:g} s", "n/a")]
    latencies = burst.get("create_seconds") or []
    p50 = latencies[len(latencies) // 2] if latencies else None
    answered = (f"{burst['created']} created, {burst['from_pool']} from the pool, {burst['errors']} errors"
                + (f" ({burst['first_error']})" if burst.get("first_error") else ""))
    verdict = at_most(burst["seconds"], BURST_SECONDS) if not burst["errors"] else f"missed: {burst['errors']} errors"
    refill = burst.get("refill_seconds")
    return [Row(title, "all answered (wall), per create p50 / slowest", fmt_seconds(burst["seconds"]),
                fmt_seconds(latencies[-1] if latencies else None), f"{answered}; create p50 {fmt_seconds(p50)}",
                f"≤ {BURST_SECONDS:g} s", verdict),
            Row(title, "pool full again after the burst", fmt_seconds(refill), "—",
                "not within 120 s" if refill is None else "—")]


def density_rows(density: dict[str, Any] | None, total: float) -> list[Row]:
    """Idle sandboxes actually started together, and what each was measured to cost."""
    if not density:
        return []
    title = f"density: {density['sandboxes']} idle sandboxes up at once"
    stopped = f" (stopped early: {density['error']})" if density.get("error") else ""
    containers = density["containers"]
    drop = density["host_available_drop_per_added_kib"] * 1024
    return [Row(title, "container working set (mean / max)", f"{containers['working_set_mean'] / 2**20:.1f} MiB",
                f"{containers['working_set_max'] / 2**20:.1f} MiB", f"{density['wanted']} wanted{stopped}",
                f"≤ {CONTAINER_MIB:g} MiB", at_most(containers["working_set_mean"] / 2**20, CONTAINER_MIB)),
            Row(title, "gateway RSS per sandbox", f"{density['gateway_rss_per_sandbox_kib']:.0f} KiB", "—",
                f"{density['gateway_rss_kib'] / 1024:.0f} MiB in all", "≤ 1 MiB",
                at_most(density["gateway_rss_per_sandbox_kib"], GATEWAY_KIB_PER_SANDBOX)),
            Row(title, "host MemAvailable drop per added sandbox", f"{drop / 2**20:.1f} MiB", "—",
                f"≈ {int(total / drop) if drop > 0 else 0} would fit in {total / 2**30:.1f} GiB")]


def big_output_rows(results: dict[str, Any]) -> list[Row]:
    """A PNG, a stream flood, an HTML table: every method against raw, the gateway's against a target."""
    rows = []
    for key, title in BIG_OUTPUTS:
        scenario = results.get(key)
        if not scenario:
            continue
        raw, kg = scenario.get("raw"), scenario.get("kg")
        for name, series in scenario.items():
            if name == "raw":
                continue
            row = latency_row(title, series, vs(series, raw, "raw"))
            if name in GATEWAY_METHODS and raw and raw.get("p50") and series.get("p50"):
                row.target = f"≤ {BIG_OUTPUT_RATIO:.2f}× raw, < KG"
                verdicts = [at_most(series["p50"] / raw["p50"], BIG_OUTPUT_RATIO)]
                if kg and kg.get("p50"):
                    faster = series["p50"] < kg["p50"]
                    verdicts.append(f"{'faster' if faster else 'slower'} than KG ({ratio(series['p50'], kg['p50'])})")
                row.verdict = "; ".join(verdicts)
            elif name in ("kg", "kg_quickack"):
                row.method += " (local-process kernel)"
            rows.append(row)
        if raw:
            rows.append(latency_row(title, raw, "baseline"))
    return rows


def isolation_rows(isolation: dict[str, Any] | None) -> list[Row]:
    """gVisor against runc (the baseline), the same gateway and requests."""
    if not isolation:
        return []
    rows = []
    for kind, title in (("start", "gVisor: create + 1+1 (pool off)"), ("roundtrip", "gVisor: round trip of 1+1"),
                        ("png", "gVisor: 2 MiB PNG relayed")):
        if isolation.get(kind):
            runc, gvisor = isolation[kind]["runc"], isolation[kind]["gvisor"]
            rows.append(latency_row(title, gvisor, vs(gvisor, runc, "runc")))
            rows.append(latency_row(title, runc, "baseline"))
    memory = isolation.get("memory") or {}
    if memory.get("gvisor") and memory.get("runc"):
        runc, gvisor = memory["runc"]["working_set_mean"], memory["gvisor"]["working_set_mean"]
        rows.append(Row("gVisor: idle sandbox memory", "container working set, gvisor",
                        f"{gvisor / 2**20:.1f} MiB", "—", f"{ratio(gvisor, runc)} runc"))
        rows.append(Row("gVisor: idle sandbox memory", "container working set, runc",
                        f"{runc / 2**20:.1f} MiB", "—", "baseline"))
    return rows


def under_load_rows(under_load: dict[str, Any] | None) -> list[Row]:
    """``1+1`` while N sandboxes stream against nothing else running (issue 15 sets no bound: reported)."""
    if not under_load or not under_load["loaded"].get("n"):
        return []
    loaded, unloaded, phases = under_load["loaded"], under_load["unloaded"], under_load["phases"]
    title = f"1+1 while {under_load['streamers']} sandboxes stream"
    row = latency_row(title, loaded, vs(loaded, unloaded, "unloaded"))
    loads = [load for phase in phases for load in phase["load"]]
    row.target = "p99 against unloaded"
    row.verdict = f"{ratio(loaded['p99'], unloaded['p99'])} at load {min(loads):.1f}–{max(loads):.1f}"

    def cpu(kind: str) -> str:
        """Each party's mean CPU over the phases of ``kind`` (share of one core), and the machine's."""
        mine = [phase for phase in phases if phase["kind"] == kind]
        parties = {name: sum(phase["cpu"][name] for phase in mine) / len(mine) for name in mine[0]["cpu"]}
        busy = sum(phase["machine_busy"] for phase in mine) / len(mine)
        return f"{fmt_shares(parties)}; machine {busy:.0%}"

    streamed = f"streamers: {under_load['lines_per_second']:.1f} lines/s each"
    return [row, latency_row(title, unloaded, "baseline"),
            Row(title, "CPU while loaded (share of one core)", "—", "—", cpu("loaded"), streamed),
            Row(title, "CPU while unloaded (share of one core)", "—", "—", cpu("unloaded"))]


def replica_rows(replicas: dict[str, Any] | None) -> list[Row]:
    """Creates and executions per second through one replica (the baseline) and three; the failover time."""
    if not replicas:
        return []
    rows = []
    one = replicas.get("create_1") or {}
    for size in (1, 3):
        made = replicas.get(f"create_{size}")
        if made:
            rows.append(Row(f"{replicas['sandboxes']} cold creates, 4 at a time", f"{size} replica(s)",
                            f"{made['per_second']:.2f}/s", "—",
                            "baseline" if size == 1 else f"{ratio(made['per_second'], one.get('per_second'))} 1 replica"))
    title = f"{replicas.get('sandboxes')} sandboxes × {replicas.get('executions')} executions at once"
    base = replicas.get("execute_1") or {}
    for name in ("execute_1", "execute_3", "execute_3_forwarded"):
        series = replicas.get(name)
        if series:
            rows.append(latency_row(title, series, "baseline" if name == "execute_1" else vs(series, base, "1 replica")))
            rows.append(Row(title, f"throughput, {series['label']}", f"{series['throughput']:.0f}/s", "—",
                            "baseline" if name == "execute_1"
                            else f"{ratio(series['throughput'], base.get('throughput'))} 1 replica"))
    failover = replicas.get("failover")
    if failover and failover.get("n"):
        rows.append(Row("failover", failover["label"] + errors_note(failover), fmt_seconds(failover["p50"]),
                        fmt_seconds(failover["p99"]),
                        f"{ratio(failover['p50'], failover['lease_timeout'])} the lease timeout"))
    return rows


def pause_rows(pause: dict[str, Any] | None) -> list[Row]:
    """Pause against delete, resume against a cold create; the density of paused sandboxes."""
    if not pause:
        return []
    rows = []
    title = "pause and resume (small state)"
    for name, base, base_name in (("pause", "delete", "delete"), ("resume", "create", "cold create"),
                                  ("resume_pool", "resume", "resume, pool off")):
        if pause.get(name):
            rows.append(latency_row(title, pause[name], vs(pause[name], pause.get(base), base_name)))
    for name in ("delete", "create"):
        if pause.get(name):
            rows.append(latency_row(title, pause[name], "baseline"))
    density = pause.get("density") or {}
    if density.get("count"):
        title = f"{density['count']} paused sandboxes"
        errors = f" ({density['errors']} errors)" if density.get("errors") else ""
        rows.append(Row(title, f"gateway disk per paused sandbox, allocated{errors}",
                        f"{density['disk_per_sandbox'] / 1024:.1f} KiB", "—",
                        f"≈ {density['fit_on_disk']} fit in the free disk" if density.get("fit_on_disk") else "—"))
        rows.append(Row(title, "saved state per paused sandbox (x = 41, empty directory)",
                        f"{density['saved_per_sandbox']:.0f} bytes", "—", "—"))
        rows.append(Row(title, "gateway RSS per paused sandbox", f"{density['rss_per_sandbox_kib']:.1f} KiB", "—",
                        f"{density['rss_0_kib'] / 1024:.0f} MiB with none"))
        rows.append(Row(title, "create + pause, 4 at a time", f"{density['seconds'] / density['count']:.2f} s each",
                        "—", "—"))
    return rows


def markdown(rows: list[Row]) -> str:
    header = ["scenario", "method", "p50", "p99", "vs baseline (p50 / p99)", "target", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(v) for v in dataclasses.astuple(row)) + " |")
    return "\n".join(lines)


#: One colour per method, the same in every panel.
COLOURS = {"rest": "tab:blue", "ndjson": "tab:orange", "ws": "tab:green", "jupyter_ws": "tab:olive",
           "raw": "black", "kg": "tab:red", "kg_quickack": "tab:purple", "pooled": "tab:green",
           "cold": "tab:blue", "gateway": "tab:blue"}


def chart(results: dict[str, Any], path: Path) -> None:
    """CDFs of the latency distributions, one panel per scenario (log time axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    scale = results.get("scale") or {}
    panels = [
        ("round trip of 1+1 in a live kernel", results.get("roundtrip") or {}),
        ("2 MiB PNG output relayed", results.get("png") or {}),
        ("20 MiB stream flood relayed", results.get("big_flood") or {}),
        ("10 MB HTML table relayed", results.get("big_html") or {}),
        ("first result: POST /sandboxes + 1+1", {k: v for k, v in (results.get("first_result") or {}).items()
                                                  if isinstance(v, dict) and v.get("samples")}),
        (f"{scale.get('sandboxes', '?')} sandboxes × {scale.get('executions', '?')} executions at once",
         {k: v for k, v in scale.items() if k in ("gateway", "raw") and isinstance(v, dict)}),
    ]
    fig, axes = plt.subplots(3, 2, figsize=(14, 18), layout="constrained")
    for ax, (title, series_by_name) in zip(axes.flat, panels):
        drawn = False
        for name, series in series_by_name.items():
            samples = np.sort(np.asarray(series.get("samples") or [])) * 1000
            if samples.size == 0:
                continue
            y = np.arange(1, samples.size + 1) / samples.size
            ax.step(np.concatenate([[samples[0]], samples]), np.concatenate([[0], y]), where="post",
                    color=COLOURS.get(name), lw=2 if name == "raw" else 1.4,
                    label=f"{series['label']}: p50 {np.percentile(samples, 50):.3g} ms, "
                          f"p99 {np.percentile(samples, 99):.3g} ms (n={samples.size})")
            drawn = True
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(title)
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        for q in (0.5, 0.99):
            ax.axhline(q, color="grey", lw=0.6, ls=":")
        if drawn:
            ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.suptitle("Code Interpreter Gateway vs raw jupyter_client and Jupyter Kernel Gateway 3: latency CDFs")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
