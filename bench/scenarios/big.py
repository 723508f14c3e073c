"""Big outputs other than a PNG, relayed end to end by every method: a 20 MiB stream flood and a
10 MB HTML table (what ``DataFrame.to_html`` gives for a large frame).

Both payloads are built once per kernel, untimed, in pure Python (Kernel Gateway's kernel has no
pandas); each timed execution only sends them. The flood is 20 writes of 1 MiB to stdout, each
flushed (20 stream messages, as a printing loop makes them); the table is one ``display_data``
with ``text/html`` and ``text/plain``. The gateway of these runs keeps outputs up to 32 MiB each,
64 MiB per execution (``Live``), so nothing is truncated; every sample checks that all of it came.
"""

from __future__ import annotations

import functools
from typing import Any

from bench.harness import Bench
from bench.measure import Series, log, sample_rounds
from bench.scenarios.live import LABELS, RELAY_METHODS, Live

MiB = 1 << 20
FLOOD_CHUNKS = 20
#: Rows of the table: each row is ~100 bytes of HTML, so 100,000 rows are ~10 MB.
TABLE_ROWS = 100_000

SETUP = f"""
import sys
from IPython.display import display
_chunk = 'x' * {MiB}
_rows = ''.join('<tr><th>%d</th><td>%.6f</td><td>%.6f</td><td>label-%05d</td></tr>\\n' % (i, i / 7, i / 13, i % 99991)
                for i in range({TABLE_ROWS}))
_html = '<table border="1" class="dataframe"><thead><tr><th></th><th>a</th><th>b</th><th>c</th></tr></thead>' \\
        '<tbody>\\n' + _rows + '</tbody></table>'
del _rows
"""
CODES = {
    "flood": f"for _ in range({FLOOD_CHUNKS}):\n    sys.stdout.write(_chunk); sys.stdout.flush()",
    "html": "display({'text/html': _html, 'text/plain': '<DataFrame: %d rows>' % " + str(TABLE_ROWS) + "}, raw=True)",
}
#: What each must deliver: stdout characters, or characters of text/html.
MIN_CHARS = {"flood": FLOOD_CHUNKS * MiB, "html": TABLE_ROWS * 60}
TITLES = {"flood": "20 MiB stream flood relayed", "html": "10 MB HTML table relayed"}


def delivered(kind: str, result: Any) -> int:
    """Characters of the payload in what a method returned (an Execution, or Jupyter messages)."""
    if isinstance(result, dict):
        items = [(o["output_type"], o) for o in result["outputs"]]
    else:
        items = [(m["msg_type"], m["content"]) for m in result]
    if kind == "flood":
        return sum(len(o.get("text", "")) for t, o in items if t == "stream" and o.get("name") == "stdout")
    return sum(len(o.get("data", {}).get("text/html", "")) for t, o in items if t == "display_data")


async def checked(kind: str, method: Any) -> None:
    chars = delivered(kind, await method(CODES[kind], None))
    if chars < MIN_CHARS[kind]:
        raise RuntimeError(f"{kind}: {chars} chars arrived, expected at least {MIN_CHARS[kind]}")


async def run(bench: Bench, live: Live) -> None:
    n, warmup, budget = bench.n(25, 3), bench.n(2, 1), bench.n(150, 30)
    await live.setup(SETUP)
    for kind in ("flood", "html"):
        log(f"{TITLES[kind]}: {n} interleaved rounds")
        methods = {name: functools.partial(checked, kind, live.methods[name])
                   for name in RELAY_METHODS if name in live.methods}
        series = {name: Series(name, LABELS[name]) for name in methods}
        await sample_rounds(methods, series, n=n, warmup=warmup, budget=budget)
        bench.results[f"big_{kind}"] = {name: s.to_dict() for name, s in series.items()}
        for s in series.values():
            log(f"  {s.label:40s} p50 {s.p50 * 1e3 if s.p50 else float('nan'):7.1f} ms  "
                f"p99 {s.p99 * 1e3 if s.p99 else float('nan'):7.1f} ms  errors {s.errors}")
