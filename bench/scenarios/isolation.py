"""gVisor against runc: the same gateway (``--allow-isolation=gvisor``, pool off) and the same requests,
only ``"isolation"`` differs. Baseline: runc, measured in the same rounds.

- start: ``POST /sandboxes`` then ``1+1`` (the sandbox deleted untimed);
- round trip of ``1+1`` and the 2 MiB PNG (``bench.scenarios.png``), REST, in one sandbox each;
- memory: an idle sandbox's container working set (for gVisor the Sentry's, its tmpfs included),
  after one ``1+1``, over a few sandboxes.

Needs runsc registered (``make bench`` passes ``--runsc`` to ``deploy/host/ensure-docker.sh``).
"""

from __future__ import annotations

import functools
import subprocess
from typing import Any

from bench import clients
from bench.harness import Bench, Gateway, container_memory
from bench.measure import Series, log, sample_rounds
from bench.scenarios import png
from bench.scenarios.live import pool_args

ISOLATIONS = ("runc", "gvisor")
#: Idle sandboxes of each isolation whose memory is averaged.
IDLE = 3


def container_id(sandbox_id: str) -> str:
    return subprocess.run(["docker", "inspect", "--format", "{{.Id}}", f"code-gateway-{sandbox_id}"],
                          capture_output=True, text=True, check=True).stdout.strip()


async def run(bench: Bench) -> None:
    n, warmup, budget = bench.n(20, 3), bench.n(3, 1), bench.n(150, 30)
    out: dict[str, Any] = {}
    bench.results["isolation"] = out
    async with Gateway(bench, "isolation", extra=["--allow-isolation=gvisor"], **pool_args()) as gateway:
        http = await gateway.connect()
        try:
            async def start(isolation: str) -> None:
                sandbox = await clients.create_sandbox(http, {"isolation": isolation})
                await clients.rest_execute(http, sandbox["id"], "1+1")
                starts[isolation].append(sandbox["id"])

            starts: dict[str, list[str]] = {name: [] for name in ISOLATIONS}
            log(f"isolation: create + 1+1 under runc and gVisor ({n} interleaved rounds)")
            series = {name: Series(f"start_{name}", f"create + 1+1, {name}") for name in ISOLATIONS}
            await sample_rounds({name: functools.partial(start, name) for name in ISOLATIONS}, series,
                                n=n, warmup=warmup, budget=budget)
            out["start"] = {name: s.to_dict() for name, s in series.items()}
            for ids in starts.values():
                for sandbox_id in ids[IDLE:]:
                    await clients.delete_sandbox(http, sandbox_id)
                del ids[IDLE:]

            # Memory of idle sandboxes (after their 1+1), then one of each for the latency rounds.
            out["memory"] = {}
            for name, ids in starts.items():
                sets = [container_memory(container_id(sandbox_id))["working_set"] for sandbox_id in ids]
                out["memory"][name] = {"sandboxes": len(sets), "working_set_mean": sum(sets) / max(len(sets), 1)}
            live = {name: ids[0] for name, ids in starts.items()}

            log(f"isolation: round trip of 1+1 and the 2 MiB PNG, REST ({n} interleaved rounds)")
            for sandbox_id in live.values():
                await clients.rest_execute(http, sandbox_id, png.SETUP, expect=None)

            async def execute(isolation: str, code: str) -> None:
                result = await clients.rest_execute(http, live[isolation], code, expect=None if code == png.CODE
                                                    else "2")
                if code == png.CODE and png.png_chars(result) < png.MIN_CHARS:
                    raise RuntimeError("the PNG did not arrive whole")

            for kind, code in (("roundtrip", "1+1"), ("png", png.CODE)):
                series = {name: Series(f"{kind}_{name}", f"REST execute, {name}") for name in ISOLATIONS}
                await sample_rounds({name: functools.partial(execute, name, code) for name in ISOLATIONS}, series,
                                    n=n * 3 if kind == "roundtrip" else n, warmup=warmup, budget=budget)
                out[kind] = {name: s.to_dict() for name, s in series.items()}
        finally:
            await http.close()
    for kind in ("start", "roundtrip", "png"):
        for name in ISOLATIONS:
            s = out[kind][name]
            log(f"  {kind:9s} {name:6s} p50 {s['p50']}  p99 {s['p99']}  errors {s['errors']}")
    for name in ISOLATIONS:
        log(f"  memory    {name:6s} {out['memory'][name]['working_set_mean'] / 2**20:.1f} MiB per idle sandbox")
