"""What a sandbox uses right now: CPU time, memory (current and peak), processes, disk.

    usage = cgroup_usage(container_pid)          # docker: the container's cgroup (v1 or v2)
    usage = process_tree_usage(kernel_pid)       # local: the kernel and its descendants
    usage.disk_bytes = directory_bytes(workdir)  # (or filesystem_bytes for a tmpfs)

Everything is read from ``/proc`` and ``/sys/fs/cgroup``, which the kernel writes: the cgroup's
path comes from ``/proc/<pid>/cgroup``, never from a name inside the sandbox. Blocking reads of a
few small files; callers run them where a few hundred microseconds do not matter.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Usage:
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    #: The most memory used at once since the sandbox started (None where the kernel does not say).
    memory_peak_bytes: int | None = None
    #: Processes and threads (what the pids limit counts).
    pids: int | None = None
    #: Bytes in the working directory (and, for containers, in /tmp).
    disk_bytes: int | None = None
    tmp_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, PermissionError, ProcessLookupError, OSError):
        return None


def _number(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _fields(path: Path) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.stat``)."""
    fields = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            fields[key] = int(value)
    return fields


def cgroup_paths(pid: int) -> dict[str, Path]:
    """The cgroup directories of ``pid``: ``{"unified": ...}`` on cgroup v2, one per controller on v1."""
    paths: dict[str, Path] = {}
    for line in (_read(Path(f"/proc/{pid}/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if not controllers:
            if (CGROUP_ROOT / "cgroup.controllers").exists():  # a pure v2 hierarchy
                paths["unified"] = CGROUP_ROOT / relative
            continue
        for controller in controllers.split(","):
            if controller in ("memory", "cpuacct", "pids"):
                paths[controller] = CGROUP_ROOT / controller / relative
    return paths


def cgroup_usage(pid: int) -> Usage:
    """The usage of the cgroup ``pid`` is in (a container's init: the whole container)."""
    paths = cgroup_paths(pid)
    if "unified" in paths:
        group = paths["unified"]
        cpu = _fields(group / "cpu.stat").get("usage_usec")
        return Usage(
            cpu_seconds=None if cpu is None else cpu / 1e6,
            memory_bytes=_working_set(_number(group / "memory.current"), _fields(group / "memory.stat"), "inactive_file"),
            memory_peak_bytes=_number(group / "memory.peak"),
            pids=_number(group / "pids.current"),
        )
    cpu = _number(paths["cpuacct"] / "cpuacct.usage") if "cpuacct" in paths else None
    memory = paths.get("memory")
    return Usage(
        cpu_seconds=None if cpu is None else cpu / 1e9,
        memory_bytes=None if memory is None else _working_set(
            _number(memory / "memory.usage_in_bytes"), _fields(memory / "memory.stat"), "total_inactive_file"),
        memory_peak_bytes=None if memory is None else _number(memory / "memory.max_usage_in_bytes"),
        pids=_number(paths["pids"] / "pids.current") if "pids" in paths else None,
    )


def _working_set(usage: int | None, stat: dict[str, int], inactive: str) -> int | None:
    """Usage minus inactive file pages: what ``docker stats`` shows, and what the OOM killer weighs."""
    if usage is None:
        return None
    return max(0, usage - stat.get(inactive, 0))


def oom_kills(groups: dict[str, Path]) -> int | None:
    """How many processes the OOM killer has killed in the cgroup at ``groups`` (``cgroup_paths``)."""
    if "unified" in groups:
        return _fields(groups["unified"] / "memory.events").get("oom_kill")
    if "memory" in groups:
        return _fields(groups["memory"] / "memory.oom_control").get("oom_kill")
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            queue.extend(int(child) for child in (_read(task) or "").split())
    return found


def process_tree_usage(pid: int) -> Usage:
    """The usage of ``pid`` and every process below it (a local sandbox's kernel and what it started)."""
    cpu = memory = threads = 0
    peak: int | None = None
    for member in process_tree(pid):
        stat = _read(Path(f"/proc/{member}/stat"))
        if stat is None:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        cpu += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        threads += int(fields[17])
        statm = _read(Path(f"/proc/{member}/statm"))
        memory += int(statm.split()[1]) * PAGE if statm else 0
        for line in (_read(Path(f"/proc/{member}/status")) or "").splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak or 0, int(line.split()[1]) * 1024)
    return Usage(cpu_seconds=cpu / CLOCK_TICKS, memory_bytes=memory, memory_peak_bytes=peak, pids=threads)


def filesystem_bytes(path: str) -> int | None:
    """Bytes used on the filesystem at ``path`` (a sandbox's own tmpfs)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return (info.f_blocks - info.f_bfree) * info.f_frsize


def directory_bytes(root: Path) -> int:
    """Bytes of the files under ``root``, links not followed."""
    total = 0
    for directory, _, names in os.walk(root, followlinks=False):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total
