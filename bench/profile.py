"""Where the gateway's time goes: py-spy over a gateway while it runs one kind of execution in a loop.

    .venv/bin/python -m bench.profile png --method rest -n 40       # writes bench/results/profile-png-rest.txt
    .venv/bin/python -m bench.profile roundtrip --method ws -n 500
    .venv/bin/python -m bench.profile html --method channels -n 30     # the Jupyter channels WebSocket

The gateway is the working tree's (as in ``make bench``: docker provisioner, pool off); py-spy
(``pip install py-spy``, not a dependency) attaches to it for the loop only and prints the
functions that held the gateway's threads most (``--idle`` off: time waiting is not counted).
Also prints the server CPU per execution, for comparison with the benchmark's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

from bench import clients
from bench.harness import REPO, Bench, Gateway, cpu_seconds
from bench.measure import log
from bench.scenarios import big, png
from bench.scenarios.live import BIG_OUTPUT_CAPS, pool_args

CODES = {"roundtrip": ("1+1", "2", None), "png": (png.CODE, None, png.SETUP),
         "flood": (big.CODES["flood"], None, big.SETUP), "html": (big.CODES["html"], None, big.SETUP)}


async def profile(bench: Bench, scenario: str, method: str, count: int, rate: int) -> None:
    code, expect, setup = CODES[scenario]
    spy = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    async with Gateway(bench, "profile", extra=BIG_OUTPUT_CAPS, **pool_args()) as gateway:
        http = await gateway.connect()
        sandbox_id = (await clients.create_sandbox(http))["id"]
        run: Any
        if method == "rest":
            async def run(c: str, e: str | None) -> Any:
                return await clients.rest_execute(http, sandbox_id, c, e)
        elif method == "ndjson":
            async def run(c: str, e: str | None) -> Any:
                return await clients.ndjson_execute(http, sandbox_id, c, e)
        elif method == "channels":
            session = uuid.uuid4().hex
            socket = await clients.ws_connect(
                f"{gateway.ws_base}/api/kernels/{sandbox_id}/channels?session_id={session}", gateway.headers)

            async def run(c: str, e: str | None) -> Any:
                return await clients.channels_execute(socket, c, session, e)
        else:
            socket = await clients.ws_connect(f"{gateway.ws_base}/api/v1/sandboxes/{sandbox_id}/stream",
                                              gateway.headers)

            async def run(c: str, e: str | None) -> Any:
                return await clients.ws_execute(socket, c, e)
        if setup:
            await run(setup, None)
        for _ in range(10):
            await run(code, expect)
        out = REPO / "bench" / "results" / f"profile-{scenario}-{method}.txt"
        raw = bench.tmp / "profile.raw"
        spying = subprocess.Popen([spy, "record", "--pid", str(gateway.pid), "--rate", str(rate), "--format", "raw",
                                   "--output", str(raw), "--threads", "--gil"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # py-spy attaches
        cpu, began = cpu_seconds(gateway.pid), time.perf_counter()
        for _ in range(count):
            await run(code, expect)
        cpu, wall = cpu_seconds(gateway.pid) - cpu, time.perf_counter() - began
        spying.send_signal(2)
        spying.wait()
        log(f"{count} {scenario} executions over {method}: {wall / count * 1e3:.2f} ms wall, "
            f"{cpu / count * 1e6:.0f} µs gateway CPU each")
        out.write_text(summarize(raw.read_text(), count) if raw.exists() else "(py-spy wrote nothing)\n")
        log(f"wrote {out.relative_to(REPO)}")
        await http.close()


def summarize(raw: str, count: int) -> str:
    """Self and total samples per function (py-spy's raw format: ``frame;frame;... N`` per line)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        hits = int(n)
        samples += hits
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + hits
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + hits
    lines = [f"{samples} samples over {count} executions", "", "self:"]
    lines += [f"{n:7d} {n / samples:6.1%}  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:45]]
    lines += ["", "total:"]
    lines += [f"{n:7d} {n / samples:6.1%}  {f}" for f, n in sorted(total.items(), key=lambda x: -x[1])[:70]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(CODES))
    parser.add_argument("--method", choices=["rest", "ndjson", "ws", "channels"], default="rest")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    args = parser.parse_args()
    bench = Bench(quick=True, only=[])
    bench.run_id = f"profile-{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(profile(bench, args.scenario, args.method, args.n, args.rate))
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
