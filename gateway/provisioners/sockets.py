"""Kernel sockets by descriptor: the gateway connects only to the sockets a kernel itself bound.

A kernel binds its ipc sockets in a directory its sandbox controls (the container's
``/run/code-gateway``; for gVisor or the local provisioner, a host directory). Connecting there
by name would let code in the sandbox swap a socket for a symlink to any unix socket the gateway
(root) can reach: the Docker engine, or another sandbox's kernel. ZeroMQ connects again by name
on its own whenever a connection drops, so checking once is not enough. Here:

- each socket is opened ``O_PATH | O_NOFOLLOW`` in a directory reached one component at a time
  without following symlinks (``open_directory``), and must be a socket owned by the kernel's
  uid (``open_socket``);
- ZeroMQ connects to ``<prefix>-<port>``, the socket of a ``Relay`` of ours in a directory only
  the gateway writes (``<sandbox_dir>/sock``), which connects each connection on to
  ``/proc/self/fd/<descriptor>``: the first connect and every reconnect reach exactly the
  verified socket, as long as the descriptor is held (for the kernel's life: ``detach`` removes
  the relays' sockets first and closes descriptors only after a grace period, so no connect in
  flight can reach a reused descriptor number). The relay also bounds each message the kernel
  sends (``max_message_bytes``), which libzmq would assemble whole however large;
- the sockets' identities (device, inode) are recorded with the sandbox, so a gateway that
  re-attaches after a restart refuses sockets the sandbox replaced in the meantime.

    sockets = KernelSockets()
    identities = await sockets.attach_when_bound(lambda: open_directory(root, "run/code-gateway"),
                                                 Path(km.ip), km.ports, owner=1000)
    ...                                                   # ipc://<sandbox_dir>/sock/k-<port>
    sockets.attach(directory, Path(km.ip), km.ports, owner=1000, expect=identities)  # re-attach
    sockets.detach()
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.provisioners.relay import Relay
from gateway.tasks import done_within

log = logging.getLogger(__name__)

#: (st_dev, st_ino) of a socket: which socket it is, whatever its name.
Identity = tuple[int, int]

#: Bytes of one message a kernel may send (counting its frames' overhead: see ``relay``) unless the
#: gateway says otherwise: its default output caps' ``max_pending_bytes``, past which ``Replies``
#: would drop the message anyway.
MAX_MESSAGE_BYTES = 20 << 20

#: Seconds a detached descriptor stays open (pointing at nothing any link names) before it closes.
GRACE = 5.0

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_retired: list[tuple[float, list[int]]] = []


#: Connections a relay's socket holds waiting to be accepted (ZeroMQ makes one per gateway socket).
LISTEN_BACKLOG = 64

#: Seconds a just-bound socket may take to be owned by the kernel's uid before it is refused.
OWNER_SETTLE = 2.0
#: First pause (s) between looks at a socket directory while waiting for the kernel to bind, doubling to:
FIRST_PAUSE = 0.005
#: Longest pause between looks at a socket directory while waiting for the kernel to bind (s).
#: Where inotify is there, a change in the directory ends a pause at once: this only bounds the
#: wait if an event is missed.
MAX_PAUSE = 0.05

# inotify(7): names created, moved in, or changed (a socket chowned to the kernel's uid: gVisor).
_IN_ATTRIB, _IN_MOVED_TO, _IN_CREATE = 0x4, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class SocketRefused(RuntimeError):
    """The kernel's sockets are not what the kernel bound, or cannot be reached (a message safe to log)."""


class SocketNotOwned(SocketRefused):
    """A socket that is not owned by the kernel's uid (yet: under gVisor the host file is created
    as root and given to the sandbox's uid a moment later)."""


class SocketNotBound(SocketRefused):
    """A socket the kernel should bind is not there (yet)."""


def open_directory(start: int, path: str) -> int:
    """A descriptor of ``path`` under the directory ``start``, no component of it a symlink.

    ``path`` is relative and made of plain names (no ``..``). The caller closes the descriptor.
    """
    names = path.split("/")
    if any(name in ("", ".", "..") for name in names):
        raise ValueError(f"not a plain relative path: {path!r}")
    fd = os.dup(start)
    try:
        for name in names:
            try:
                following = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            except OSError as exc:  # ENOTDIR (a symlink too), ENOENT, ELOOP...
                raise SocketRefused(f"{path}: {name} is not a directory one can reach ({exc.strerror})") from None
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_socket(directory: int, name: str, owner: int) -> tuple[int, Identity]:
    """An ``O_PATH`` descriptor of the socket ``name`` in ``directory`` and its identity.

    Refused unless ``name`` itself (never what it may link to) is a socket owned by ``owner``.
    """
    fd = os.open(name, _PATH_FLAGS, dir_fd=directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode):
            raise SocketRefused(f"{name} is not a socket (mode {stat.filemode(info.st_mode)})")
        if info.st_uid != owner:
            raise SocketNotOwned(f"{name} belongs to uid {info.st_uid}, not to the kernel's uid {owner}")
    except BaseException:
        os.close(fd)
        raise
    return fd, (info.st_dev, info.st_ino)


def _retire(fds: Iterable[int]) -> None:
    """Close ``fds`` once no connect can still be resolving a link to them; close older ones now due."""
    now = time.monotonic()
    due = [entry for entry in _retired if entry[0] <= now]
    for entry in due:
        _retired.remove(entry)
        for fd in entry[1]:
            os.close(fd)
    fds = list(fds)
    if fds:
        _retired.append((now + GRACE, fds))


class DirectoryChanges:
    """Wakes a waiter when names appear or change in one directory (inotify, read on the event loop).

    Only a wake-up: what changed is looked at by ``attach``, through a descriptor, as before.
    ``watch`` returns None where inotify is not available; then the waiter polls.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.loop = loop
        self.changed = asyncio.Event()
        loop.add_reader(fd, self._read)

    @classmethod
    def watch(cls, directory: int, loop: asyncio.AbstractEventLoop) -> DirectoryChanges | None:
        """Watch the directory open at descriptor ``directory`` (an ``O_PATH`` one will do)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return None
            # By the descriptor's /proc link: the very directory reached without following symlinks.
            if libc.inotify_add_watch(fd, f"/proc/self/fd/{directory}".encode(),
                                      _IN_CREATE | _IN_MOVED_TO | _IN_ATTRIB) < 0:
                os.close(fd)
                return None
        except (AttributeError, OSError):
            return None
        return cls(fd, loop)

    def _read(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        except OSError:  # the watch is gone: wake the waiter, which polls from then on
            self.loop.remove_reader(self.fd)
        self.changed.set()

    async def wait(self, seconds: float) -> None:
        """Until a change since the last ``clear`` or ``seconds``, whichever comes first."""
        await done_within(self.changed.wait(), seconds)

    def clear(self) -> None:
        self.changed.clear()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


class KernelSockets:
    """The verified sockets of one kernel (across its restarts), held by descriptor, and the relays to them."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        #: Bytes of one message the kernel may send on any socket; a larger one is cut by the relay.
        self.max_message_bytes = max_message_bytes
        self._fds: dict[int, int] = {}
        self._links: list[Path] = []
        self._relays: list[Relay] = []
        #: Port -> identity of the sockets attached now (empty when detached).
        self.identities: dict[int, Identity] = {}

    def attach(self, directory: int, prefix: Path, ports: Iterable[int], *, owner: int,
               expect: dict[int, Identity] | None = None) -> dict[int, Identity]:
        """Open the kernel's sockets ``<name>-<port>`` in ``directory`` and relay ``<prefix>-<port>`` to
        them, ``name`` being the prefix's own (``k`` for a sandbox's kernel, ``c<id>`` for a context's).

        With ``expect`` (identities recorded at launch) each socket must be that very socket.
        All or nothing: on any refusal nothing changes and ``SocketRefused`` says why. The relays
        run on the running event loop.
        """
        asyncio.get_running_loop()  # (no relay can run without it: refused before anything changes)
        opened: dict[int, int] = {}
        identities: dict[int, Identity] = {}
        try:
            for port in ports:
                name = f"{prefix.name}-{port}"
                try:
                    opened[port], identities[port] = open_socket(directory, name, owner)
                except FileNotFoundError:
                    raise SocketNotBound(f"the kernel has not bound {name}") from None
                if expect is not None and tuple(expect.get(port, ())) != identities[port]:
                    raise SocketRefused(f"{name} is not the socket the kernel bound at launch")
        except BaseException:
            for fd in opened.values():
                os.close(fd)
            raise
        self.detach()
        links = prefix.parent
        if links.is_symlink():  # an older gateway's link into the sandbox: never write through it
            links.unlink()
        links.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fds = opened
        for port, fd in opened.items():
            link = Path(f"{prefix}-{port}")
            link.unlink(missing_ok=True)  # (an older gateway's symlink, or its relay's socket)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                listener.bind(str(link))
                listener.listen(LISTEN_BACKLOG)
            except BaseException:
                listener.close()
                self.detach()
                raise
            self._links.append(link)
            relay = Relay(listener, f"/proc/self/fd/{fd}", max_message_bytes=self.max_message_bytes, name=str(link))
            relay.start()
            self._relays.append(relay)
        self.identities = identities
        return identities

    async def attach_when_bound(self, directory: Callable[[], int], prefix: Path, ports: Iterable[int], *,
                                owner: int) -> dict[int, Identity]:
        """``attach`` as soon as the kernel has bound all its sockets (the caller bounds the wait):
        woken by each change in the directory (inotify), else looking again after a pause.

        ``directory`` opens the socket directory afresh for each try; it raises ``SocketRefused``
        once the kernel is gone, which ends the wait.
        """
        ports = list(ports)
        pause = FIRST_PAUSE
        loop = asyncio.get_running_loop()
        unowned_since: float | None = None
        changes: DirectoryChanges | None = None
        try:
            while True:
                fd = directory()
                try:
                    if changes is None:
                        changes = DirectoryChanges.watch(fd, loop)
                    if changes is not None:
                        changes.clear()  # (before looking: a change while we look ends the next wait)
                    return self.attach(fd, prefix, ports, owner=owner)
                except SocketNotBound:
                    pass
                except SocketNotOwned:
                    # Waited out briefly (nothing is connected meanwhile), refused if it stays so.
                    unowned_since = loop.time() if unowned_since is None else unowned_since
                    if loop.time() - unowned_since > OWNER_SETTLE:
                        raise
                finally:
                    os.close(fd)
                if changes is not None:
                    await changes.wait(pause)
                else:
                    await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
        finally:
            if changes is not None:
                changes.close()

    def detach(self) -> None:
        """Remove the relays' sockets (no connect reaches the kernel by them again), end the relays
        and every connection through them, then retire the descriptors."""
        for link in self._links:
            link.unlink(missing_ok=True)
        self._links = []
        for relay in self._relays:
            relay.close()
        self._relays = []
        _retire(self._fds.values())
        self._fds = {}
        self.identities = {}


def sockets_of(kernel_manager: object) -> KernelSockets:
    """The ``KernelSockets`` of a provisioner's kernel manager (the gateway's ``SandboxKernelManager``)."""
    sockets = getattr(kernel_manager, "sockets", None)
    if not isinstance(sockets, KernelSockets):
        raise RuntimeError("sandbox provisioners run under the gateway's SandboxKernelManager, which holds the sockets")
    return sockets


def identities_from_record(recorded: object) -> dict[int, Identity] | None:
    """The identities as stored with a sandbox (JSON: ``{"1": [dev, ino], ...}``), or None if absent."""
    if not isinstance(recorded, dict) or not recorded:
        return None
    try:
        return {int(port): (int(pair[0]), int(pair[1])) for port, pair in recorded.items()}
    except (TypeError, ValueError, IndexError):
        return None


def identities_to_record(identities: dict[int, Identity]) -> dict[str, list[int]]:
    return {str(port): [dev, ino] for port, (dev, ino) in identities.items()}
