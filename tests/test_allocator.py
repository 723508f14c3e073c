"""FreedMemory: with glibc tuned, a large buffer freed is reused without faulting its pages in again,
and what it keeps is given back on request; each case runs in a Python process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from traitlets import TraitError

from gateway.allocator import FreedMemory

MiB = 1 << 20


def run(script: str) -> dict[str, int]:
    """``script`` (with ``FreedMemory``, ``faults()``, ``rss()``, ``hold_and_free()`` defined) in a fresh interpreter: what it prints."""
    prelude = textwrap.dedent("""
        import resource
        from gateway.allocator import FreedMemory

        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

        def hold_and_free():
            # Hold 100 MiB in 20 MiB buffers, free them and print how much RSS stayed; the RSS before.
            start = rss()
            buffers = [b"x" * (20 << 20) for _ in range(5)]
            del buffers
            print(f"kept={rss() - start}")
            return start
    """)
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=60, check=True)
    return {key: int(value) for key, value in (line.split("=") for line in done.stdout.split())}


REUSE = """
    freed = FreedMemory(keep_bytes={keep}, interval=0)
    freed.start()
    print(f"tuned={{int(freed.tuned)}}")
    first = b"x" * (20 << 20)
    del first
    before = faults()
    second = b"y" * (20 << 20)  # (written whole: every page of it touched)
    print(f"faults={{faults() - before}}")
"""


def test_a_large_buffer_freed_is_reused_without_faulting_its_pages_in_again() -> None:
    tuned = run(REUSE.format(keep=128 * MiB))
    assert tuned["tuned"] == 1
    assert tuned["faults"] < 200, tuned  # (20 MiB is 5120 pages)
    # glibc's own behaviour, for comparison: the same buffer is mapped and faulted in afresh.
    untouched = run(REUSE.format(keep=0))
    assert untouched["tuned"] == 0
    assert untouched["faults"] > 4000, untouched


def test_what_the_allocator_keeps_is_given_back_on_request() -> None:
    out = run("""
        freed = FreedMemory(keep_bytes=128 << 20, interval=0)
        freed.start()
        start = hold_and_free()
        freed.give_back()
        print(f"left={rss() - start}")
    """)
    assert out["kept"] > 90 * MiB, out  # (kept for the next large output)
    assert out["left"] < 10 * MiB, out


def test_what_the_allocator_keeps_is_given_back_every_interval_until_it_stops() -> None:
    out = run("""
        import asyncio

        async def main():
            freed = FreedMemory(keep_bytes=128 << 20, interval=0.2)
            freed.start()
            start = hold_and_free()
            await asyncio.sleep(0.6)
            print(f"left={rss() - start}")
            await freed.stop()
            print(f"stopped={int(freed._task is None)}")

        asyncio.run(main())
    """)
    assert out["kept"] > 90 * MiB, out
    assert out["left"] < 10 * MiB, out
    assert out["stopped"] == 1


@pytest.mark.parametrize("trait, value, message", [
    ("keep_bytes", -1, "--FreedMemory.keep_bytes: from 0"),
    ("keep_bytes", 1 << 31, "--FreedMemory.keep_bytes: from 0"),
    ("interval", -1.0, "--FreedMemory.interval: seconds, 0 or more"),
    ("interval", float("nan"), "--FreedMemory.interval: seconds, 0 or more"),
])
def test_bad_settings_are_refused_naming_the_option(trait: str, value: float, message: str) -> None:
    with pytest.raises(TraitError, match=message):
        FreedMemory(**{trait: value})
