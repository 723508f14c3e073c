"""The sandboxes' bash kernel: PyPI's bash_kernel, with an interrupt that reaches the cell's job.

    python3 kernels/bash/kernel.py -f connection.json      (the kernelspec beside this file)

bash_kernel interrupts a cell by writing one ^C to bash's terminal, which signals the terminal's
foreground process group at that moment. That misses in two ways:

- A ^C that lands while bash is starting the cell's next job (``echo go; sleep 60`` right after
  ``go``: the ``sleep`` forked, not yet in the foreground or not yet past its exec) reaches bash
  alone, which notes it and waits for the job. The cell runs on; bash_kernel waits 30 s for a
  prompt, then gives up without a reply. Under load that is about one interrupt in ten.
- Under gVisor a ^C on a terminal signals no one.

So once a cell is interrupted, the job in the foreground of bash's terminal is sent SIGINT itself,
as the terminal would: at once under gVisor, and while the cell has not ended, again every second,
at most three times; also at each further interrupt of the kernel meanwhile (in bash_kernel that
one would escape its handler and end the request with no reply, the job still running). Bash
itself is never signalled, nor a job in the background.

Which job is in the foreground the terminal tells (``tcgetpgrp`` on its master side), except under
gVisor, which does not: there it is bash's newest child in a process group of its own. While bash
waits for a foreground job it starts no other, so a job put in the background is older.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from bash_kernel.kernel import BashKernel

#: Seconds between the SIGINTs to a job that runs on after its cell was interrupted.
SIGNAL_AGAIN_AFTER = 1.0
#: How many times such a job is signalled again at most (it may catch SIGINT and go on).
SIGNAL_AGAIN = 3


class SandboxBashKernel(BashKernel):  # type: ignore[misc]  # (bash_kernel has no type hints)
    def __init__(self, **kwargs: Any) -> None:
        #: Set while no cell runs: a job is signalled only while its cell does.
        self._cell_over = threading.Event()
        self._cell_over.set()
        self._again: threading.Thread | None = None
        super().__init__(**kwargs)

    def _start_bash(self) -> None:
        super()._start_bash()  # (again when bash exited: a new terminal, a new child)
        child = self.bashwrapper.child
        write_ctrl_c: Callable[[], None] = child.sendintr
        child.sendintr = lambda: self._interrupt(child, write_ctrl_c)  # bash_kernel's only ^C: an interrupt

    def _interrupt(self, child: Any, write_ctrl_c: Callable[[], None]) -> None:
        write_ctrl_c()
        if self._again is not None:  # (bash_kernel writes one ^C a cell)
            return
        if not terminal_tells_its_foreground(child):
            signal_foreground_job(child)  # (gVisor: the ^C did nothing)
        # Until the request ends (ipykernel then puts its own handler back): a SIGINT to the job,
        # not a KeyboardInterrupt in bash_kernel's wait for the prompt.
        signal.signal(signal.SIGINT, lambda *_: None if self._cell_over.is_set() else signal_foreground_job(child))
        self._again = threading.Thread(target=self._signal_again, args=(child,), daemon=True, name="bash-sigint")
        self._again.start()

    def _signal_again(self, child: Any) -> None:
        for _ in range(SIGNAL_AGAIN):
            if self._cell_over.wait(SIGNAL_AGAIN_AFTER):
                return
            signal_foreground_job(child)

    # bash_kernel's own parameters: ipykernel passes what the signature names (no cell_id, cell_meta).
    def do_execute(self, code: str, silent: bool, store_history: bool = True,
                   user_expressions: dict[str, Any] | None = None, allow_stdin: bool = False) -> Any:
        self._cell_over.clear()
        try:
            return super().do_execute(code, silent, store_history, user_expressions, allow_stdin)
        finally:
            self._cell_over.set()
            if self._again is not None:
                self._again.join()
                self._again = None


def terminal_foreground(child: Any) -> int | None:
    """The process group in the foreground of bash's terminal; None where the terminal does not tell (gVisor)."""
    try:
        return os.tcgetpgrp(child.child_fd)
    except OSError as error:
        if error.errno == errno.ENOTTY:
            return None
        raise


def terminal_tells_its_foreground(child: Any) -> bool:
    with contextlib.suppress(OSError):  # (closed: nothing to signal either way)
        return terminal_foreground(child) is not None
    return True


def signal_foreground_job(child: Any) -> None:
    """SIGINT to the job in the foreground of bash's terminal, if one is."""
    with contextlib.suppress(OSError):  # the terminal closed, or the job ended meanwhile
        job = foreground_job(child)
        if job is not None:
            os.killpg(job, signal.SIGINT)


def foreground_job(child: Any) -> int | None:
    """The process group in the foreground of bash's terminal, unless it is bash's own (bash at its prompt)."""
    foreground = terminal_foreground(child)
    if foreground is None:
        return newest_job(child.pid)
    return foreground if foreground != child.pid else None  # (bash leads its session and its group)


def newest_job(bash: int) -> int | None:
    """The process group of ``bash``'s newest child that has one of its own (a job of its job control)."""
    jobs: list[tuple[int, int]] = []  # (start time, process group)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as file:
                stat = file.read()
        except OSError:  # (it ended)
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...; start time is the 20th
        parent, group, started = int(fields[1]), int(fields[2]), int(fields[19])
        if parent == bash and group != bash:
            jobs.append((started, group))
    return max(jobs)[1] if jobs else None


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=SandboxBashKernel)
