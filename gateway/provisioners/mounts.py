"""Size-limited tmpfs mounts the gateway makes itself (a gVisor sandbox's socket directory), and their removal.

    mount_tmpfs(sandbox_dir / "run", size_bytes=1 << 20, inodes=256, uid=1000, gid=1000)
    unmount_under(sandbox_dir)   # every mount at or below it, before the directory is removed

Through ``mount(2)`` and ``umount2(2)`` (ctypes: Python has no binding), so the gateway must run as
root in the Docker engine's mount namespace (the engine bind-mounts the directory by its path).
A mount is never followed through a symlink: ``umount2`` gets ``UMOUNT_NOFOLLOW``, and the
directories mounted on are created by the gateway inside directories only it writes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountFailed(OSError):
    """A tmpfs could not be mounted (the message names the path and the reason)."""


def mount_tmpfs(path: Path, *, size_bytes: int, inodes: int, uid: int, gid: int, mode: int = 0o700) -> None:
    """Mount a fresh tmpfs of at most ``size_bytes`` and ``inodes`` files on the directory ``path``.

    ``nosuid,nodev,noexec``: nothing written there can be run on the host or name a device.
    """
    options = f"size={size_bytes},nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}"
    if _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options.encode()) != 0:
        code = ctypes.get_errno()
        raise MountFailed(code, f"cannot mount a tmpfs on {path}: {os.strerror(code)}")


def mounts_under(directory: Path) -> list[Path]:
    """The mount points at or below ``directory`` (as this process's mount namespace has them), deepest first."""
    root = os.path.realpath(directory)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            for line in mountinfo:
                point = line.split()[4].encode().decode("unicode_escape")  # (spaces are written \040)
                if point == root or point.startswith(root + os.sep):
                    found.append(Path(point))
    except OSError:
        return []
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount(path: Path) -> None:
    """Detach the mount on ``path`` (lazily: open descriptors keep it until closed); nothing mounted is fine."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more), or gone
            raise MountFailed(code, f"cannot unmount {path}: {os.strerror(code)}")


def unmount_under(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory`` (a sandbox's directory, before it is removed)."""
    for point in mounts_under(directory):
        unmount(point)


def mounting_problem(scratch: Path) -> str | None:
    """Why this process cannot mount a tmpfs (tried once under ``scratch``), or None if it can."""
    probe = scratch / ".mount-probe"
    try:
        probe.mkdir(mode=0o700, exist_ok=True)
        mount_tmpfs(probe, size_bytes=4096, inodes=4, uid=os.getuid(), gid=os.getgid())
        unmount(probe)
    except OSError as exc:
        return f"the gateway cannot mount a tmpfs for the kernel's sockets ({exc.strerror or exc}; it needs root)"
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass
    return None
