"""A ~2 MiB PNG (random noise, so incompressible) shown with ``display(Image(...))``, relayed end to end.

The PNG is built once per kernel, untimed, in pure Python (Kernel Gateway's kernel has no numpy);
each timed execution only displays it, so the figure is the cost of carrying ~2.8 MB of base64
from the kernel to the client.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

from bench.harness import Bench
from bench.measure import Series, log, sample_rounds
from bench.scenarios.live import LABELS, RELAY_METHODS, Live

SIDE = 837  # 837 x 837 RGB: 2.0 MiB of pixels
SETUP = f"""
import os, struct, zlib
from IPython.display import Image, display
def _chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
_raw = b''.join(b'\\x00' + os.urandom({SIDE} * 3) for _ in range({SIDE}))
_png = (b'\\x89PNG\\r\\n\\x1a\\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', {SIDE}, {SIDE}, 8, 2, 0, 0, 0))
        + _chunk(b'IDAT', zlib.compress(_raw, 1)) + _chunk(b'IEND', b''))
del _raw
"""
CODE = "display(Image(_png))"
#: The base64 text is at least this long (4/3 of the raw pixels).
MIN_CHARS = SIDE * SIDE * 3 * 4 // 3


def png_chars(result: Any) -> int:
    """Length of the image/png text in what a method returned (an Execution, or Jupyter messages)."""
    if isinstance(result, dict):
        bundles = [o.get("data", {}) for o in result["outputs"] if o["output_type"] == "display_data"]
    else:
        bundles = [m["content"]["data"] for m in result if m["msg_type"] == "display_data"]
    return sum(len(b.get("image/png", "")) for b in bundles)


async def checked(method: Any) -> None:
    result = await method(CODE, None)
    chars = png_chars(result)
    if chars < MIN_CHARS:
        raise RuntimeError(f"image/png of {chars} chars arrived, expected at least {MIN_CHARS}")


async def run(bench: Bench, live: Live) -> None:
    n, warmup, budget = bench.n(60, 5), bench.n(5, 1), bench.n(180, 30)
    await live.setup(SETUP)
    size = len(base64.b64encode(b"x" * (SIDE * SIDE * 3 + SIDE)))
    log(f"2 MiB PNG relay: {n} interleaved rounds (~{size / 1e6:.1f} MB of base64 per output)")
    methods = {name: functools.partial(checked, live.methods[name]) for name in RELAY_METHODS if name in live.methods}
    series = {name: Series(name, LABELS[name]) for name in methods}
    await sample_rounds(methods, series, n=n, warmup=warmup, budget=budget)
    bench.results["png"] = {name: s.to_dict() for name, s in series.items()}
    for s in series.values():
        log(f"  {s.label:40s} p50 {s.p50 * 1e3 if s.p50 else float('nan'):7.1f} ms  "
            f"p99 {s.p99 * 1e3 if s.p99 else float('nan'):7.1f} ms  errors {s.errors}")
