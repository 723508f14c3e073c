"""FreedMemory: the gateway's C allocator keeps the memory a large output freed for the next one, and
gives back what stayed unused for a while.

    freed = FreedMemory(parent=app)    # --FreedMemory.keep_bytes (0: the C library's own behaviour)
    freed.start()                      # tunes glibc's malloc now; gives back unused memory every interval
    freed.give_back()                  # at once
    await freed.stop()

Every large output passes through the gateway as buffers of its size: the kernel's message, the
parsed text, its JSON, the record's text for the store. By default glibc serves a buffer past its
mmap threshold (128 KiB at first, raised as such buffers are freed, at most 32 MiB) with pages of
its own and gives them back to the kernel when it is freed, and gives back what is free at the top
of its heap past 128 KiB. So each large output faults its pages in afresh: a 20 MiB flood about
14,000 page faults in the gateway, each about 3.4 µs on a virtual machine (the memory of the run
in README's Benchmarks: 48 ms of CPU per flood), 750 for a 2 MiB PNG.

``start`` makes glibc serve buffers up to 32 MiB from its heap and keep up to ``keep_bytes`` free at
its top (``mallopt``: ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``), so the next output reuses
pages already there; every ``interval`` seconds ``malloc_trim`` gives back the free pages wherever
they are, so a burst of large outputs does not hold the gateway at its peak for good. Elsewhere
than glibc (musl has neither call) nothing is changed, and ``tuned`` says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from typing import Any

from traitlets import Float, Int, TraitError, validate
from traitlets.config import LoggingConfigurable

from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Buffers up to this size come from the heap: glibc's own ceiling for its moving threshold.
HEAP_UP_TO = 32 << 20


class FreedMemory(LoggingConfigurable):
    keep_bytes = Int(
        128 << 20, help="Most bytes of freed memory the gateway's C allocator (glibc) keeps for reuse at "
        "the top of its heap, and buffers up to 32 MiB come from that heap: a large output reuses the pages "
        "of the one before instead of faulting in new ones. 0 leaves glibc's own behaviour."
    ).tag(config=True)
    interval = Float(
        60.0, help="Seconds between two givings back of the free memory the allocator holds (malloc_trim), "
        "wherever it is in the heap; 0: never."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._libc = ctypes.CDLL(None)  # (the process's own C library)
        self._task: asyncio.Task[None] | None = None
        #: Whether ``start`` changed the allocator's behaviour.
        self.tuned = False

    @validate("keep_bytes")
    def _valid_keep(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 0 <= value < 1 << 31:  # (mallopt takes an int)
            raise TraitError(f"--FreedMemory.keep_bytes: from 0 to {(1 << 31) - 1} bytes, not {value}")
        return value

    @validate("interval")
    def _valid_interval(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0:  # (NaN too)
            raise TraitError(f"--FreedMemory.interval: seconds, 0 or more (0: never), not {value:g}")
        return value

    def start(self) -> None:
        if not self.keep_bytes:
            return
        mallopt = getattr(self._libc, "mallopt", None)
        trim = getattr(self._libc, "malloc_trim", None)
        if mallopt is None or trim is None:
            log.info("memory: the C library is not glibc (no mallopt or malloc_trim): "
                     "its allocator is left as it is")
            return
        if not (mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO) and mallopt(M_TRIM_THRESHOLD, self.keep_bytes)):
            log.warning("memory: glibc refused the allocator's thresholds; its own behaviour stays")
            return
        self.tuned = True
        if self.interval:
            self._task = asyncio.create_task(self._give_back_periodically(), name="freed-memory")

    def give_back(self) -> None:
        """Return the allocator's free pages to the kernel now (glibc's ``malloc_trim(0)``)."""
        if self.tuned:
            self._libc.malloc_trim(0)

    async def _give_back_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.give_back()

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], within=5.0, what="freed memory")
            self._task = None
