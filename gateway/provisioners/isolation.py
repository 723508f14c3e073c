"""How a docker sandbox is kept from the host: ``runc`` (namespaces, cgroups, seccomp) or ``gvisor`` (runsc).

    isolation = isolation_named("gvisor", docker_runtime="runsc")
    isolation.prepare(sandbox_dir, uid=1000, gid=1000)         # gvisor: a fresh tmpfs <sandbox_dir>/run
    options.update(isolation.container_options(limits, sandbox_dir, uid=1000, gid=1000))
    fd = isolation.socket_directory(process, sandbox_dir)      # where the kernel binds its sockets
    isolation.release(sandbox_dir)                             # before the directory is removed

Both run the same hardened container (``DockerProvisioner.container_options``); they differ in
what gVisor changes:

- **Where the kernel's sockets are.** Under runc the kernel binds them in a tmpfs of the
  container's (``/run/code-gateway``), reached from the host through ``/proc/<pid>/root``. Under
  gVisor the container's filesystems live inside its own kernel (the Sentry), which the host
  cannot look into; with ``--host-uds=all`` the Sentry binds the sockets as real host sockets in
  a bind-mounted host directory. That directory is the gateway's own ``<sandbox_dir>/run``: a
  fresh tmpfs per launch (1 MiB, 256 inodes, ``nosuid,nodev,noexec``; a sandbox cannot fill the
  host's disk through it), owned by the sandbox's uid with mode 0700, inside the sandbox
  directory that only the gateway (root, 0700) reaches. The gateway attaches the sockets exactly
  as with runc (``gateway.provisioners.sockets``): by descriptor, never through a name the
  sandbox could swap for a symlink (it can create symlinks there: host ones, which the gateway
  never follows, and which resolve inside the sandbox's own root when the sandbox follows them).
- **Processes.** With the ptrace platform every sandbox process costs the host several tasks
  (the Sentry's threads and a stub process each), so the container's pids cgroup cannot count
  the sandbox's processes: it gets a host budget (``HOST_TASKS_BASE + HOST_TASKS_PER_PID *
  pids``), and the sandbox's own limit is ``RLIMIT_NPROC``, which gVisor's kernel enforces (fork
  fails with EAGAIN, as under runc's pids cgroup). An rlimit cannot be lowered on a running
  container: a pooled gVisor sandbox only fits a request for its own pids (``live_pids``).
- **Network.** runsc runs with ``--network=none``: a gVisor sandbox never has network.
- **What the host can measure.** Its memory and CPU (the container's cgroup holds the Sentry);
  not its tmpfs fill or process count (inside the Sentry): those are ``None`` in its usage.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

from gateway.provisioners.mounts import mount_tmpfs, unmount_under
from gateway.provisioners.sockets import SocketRefused, open_directory
from gateway.provisioners.usage import Usage, cgroup_usage, filesystem_bytes

RUNC = "runc"
GVISOR = "gvisor"
ISOLATIONS = (RUNC, GVISOR)

#: Inside the container: the kernel's socket directory (and its connection file).
CONTAINER_DIR = "/run/code-gateway"
HOME = "/home/sandbox"
#: The host directory (in the sandbox's directory) bind-mounted at ``CONTAINER_DIR`` under gVisor.
HOST_RUN_DIR = "run"
RUN_DIR_BYTES = 1 << 20
RUN_DIR_INODES = 256
#: The host tasks a gVisor sandbox may use: the Sentry's own, plus this many per sandbox process.
HOST_TASKS_BASE = 128
HOST_TASKS_PER_PID = 12


class Isolation(abc.ABC):
    """One way of running a sandbox's container: its Docker runtime and where its sockets are."""

    name: str
    #: Whether the sandbox's process limit can change on a running container (``docker update``).
    live_pids = True

    def __init__(self, docker_runtime: str) -> None:
        self.docker_runtime = docker_runtime

    def prepare(self, sandbox_dir: Path, *, uid: int, gid: int) -> None:
        """Before each launch of the container."""

    def release(self, sandbox_dir: Path) -> None:
        """Once the container is gone for good (the sandbox directory is removed next)."""

    @abc.abstractmethod
    def container_options(self, limits: Any, sandbox_dir: Path, *, uid: int, gid: int) -> dict[str, Any]:
        """What this isolation adds to ``containers.create``'s keyword arguments."""

    @abc.abstractmethod
    def pids_update(self, pids: int) -> dict[str, int]:
        """The engine's update body for a new process limit."""

    @abc.abstractmethod
    def socket_directory(self, process: int, sandbox_dir: Path) -> int:
        """A descriptor of the directory the kernel binds its sockets in, reached without following symlinks.

        ``process``: an ``O_PATH`` descriptor of the container's init in ``/proc`` (as the host sees
        it); ``SocketRefused`` once that process is gone.
        """

    @abc.abstractmethod
    def usage(self, pid: int) -> Usage:
        """What the sandbox whose container's init is ``pid`` uses, as far as the host can see it."""


class RuncIsolation(Isolation):
    name = RUNC

    def container_options(self, limits: Any, sandbox_dir: Path, *, uid: int, gid: int) -> dict[str, Any]:
        return {
            "runtime": self.docker_runtime,
            "tmpfs": {CONTAINER_DIR: f"size=1m,uid={uid},gid={gid},mode=0700,noexec,nosuid,nodev"},
            "pids_limit": int(limits.pids),
        }

    def pids_update(self, pids: int) -> dict[str, int]:
        return {"PidsLimit": int(pids)}

    def socket_directory(self, process: int, sandbox_dir: Path) -> int:
        try:
            root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=process)
        except OSError:
            raise SocketRefused("the sandbox's container stopped") from None
        try:
            return open_directory(root, CONTAINER_DIR.lstrip("/"))
        finally:
            os.close(root)

    def usage(self, pid: int) -> Usage:
        usage = cgroup_usage(pid)
        usage.disk_bytes = filesystem_bytes(f"/proc/{pid}/root{HOME}")  # tmpfs mount points the sandbox cannot move
        usage.tmp_bytes = filesystem_bytes(f"/proc/{pid}/root/tmp")
        return usage


class GvisorIsolation(Isolation):
    name = GVISOR
    live_pids = False

    def prepare(self, sandbox_dir: Path, *, uid: int, gid: int) -> None:
        # A fresh tmpfs each launch: nothing of an earlier kernel (stale sockets, files the sandbox
        # left) is there to be mistaken for what this one binds.
        run = sandbox_dir / HOST_RUN_DIR
        unmount_under(run)
        if run.is_symlink():
            run.unlink()
        run.mkdir(mode=0o700, exist_ok=True)
        mount_tmpfs(run, size_bytes=RUN_DIR_BYTES, inodes=RUN_DIR_INODES, uid=uid, gid=gid, mode=0o700)

    def release(self, sandbox_dir: Path) -> None:
        unmount_under(sandbox_dir / HOST_RUN_DIR)

    def container_options(self, limits: Any, sandbox_dir: Path, *, uid: int, gid: int) -> dict[str, Any]:
        from docker.types import Mount, Ulimit

        pids = int(limits.pids)
        return {
            "runtime": self.docker_runtime,
            "mounts": [Mount(target=CONTAINER_DIR, source=str(sandbox_dir / HOST_RUN_DIR), type="bind",
                             read_only=False, propagation="rprivate")],
            "pids_limit": HOST_TASKS_BASE + HOST_TASKS_PER_PID * pids,
            "ulimits": [Ulimit(name="nproc", soft=pids, hard=pids)],
        }

    def pids_update(self, pids: int) -> dict[str, int]:
        return {"PidsLimit": HOST_TASKS_BASE + HOST_TASKS_PER_PID * int(pids)}

    def socket_directory(self, process: int, sandbox_dir: Path) -> int:
        try:
            os.stat("stat", dir_fd=process)  # the Sentry still runs (else its /proc directory is empty)
        except OSError:
            raise SocketRefused("the sandbox's container stopped") from None
        start = os.open(sandbox_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return open_directory(start, HOST_RUN_DIR)
        finally:
            os.close(start)

    def usage(self, pid: int) -> Usage:
        usage = cgroup_usage(pid)  # the Sentry's cgroup: the sandbox's memory (its tmpfs included) and CPU
        usage.pids = None  # host tasks of the Sentry, not the sandbox's processes
        return usage  # (its tmpfs fill lives in the Sentry, out of the host's sight)


def isolation_named(name: str, *, docker_runtime: str) -> Isolation:
    kinds: dict[str, type[Isolation]] = {RUNC: RuncIsolation, GVISOR: GvisorIsolation}
    try:
        return kinds[name](docker_runtime)
    except KeyError:
        raise ValueError(f"no such isolation: {name!r} (one of {', '.join(ISOLATIONS)})") from None
