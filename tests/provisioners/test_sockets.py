"""KernelSockets with real unix sockets in a temporary directory: what is refused, and what a link reaches.

The attacks through real sandboxes are in tests/e2e/test_socket_redirects.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.provisioners import sockets as module
from gateway.provisioners.sockets import KernelSockets, SocketNotBound, SocketRefused, open_directory

PORTS = [1, 2]


def listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    server.setblocking(False)
    return server


def accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


async def accepted_soon(server: socket.socket, seconds: float = 5.0) -> bool:
    """Whether ``server`` accepts a connection within ``seconds`` (the relay connects on its own time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not accepted(server):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def kernel_dir(tmp_path: Path) -> Iterator[tuple[Path, list[socket.socket]]]:
    run = tmp_path / "run"
    run.mkdir()
    servers = [listening(run / f"k-{port}") for port in PORTS]
    yield run, servers
    for server in servers:
        server.close()


def directory_fd(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY)


async def test_links_reach_the_verified_socket_even_after_its_name_is_swapped(
    tmp_path: Path, kernel_dir: tuple[Path, list[socket.socket]]
) -> None:
    run, servers = kernel_dir
    trap = listening(tmp_path / "trap")
    sockets = KernelSockets()
    fd = directory_fd(run)
    identities = sockets.attach(fd, tmp_path / "sock" / "k", PORTS, owner=os.getuid())
    os.close(fd)
    assert set(identities) == set(PORTS)
    assert oct((tmp_path / "sock").stat().st_mode & 0o777) == "0o700"
    (run / "k-1").unlink()
    (run / "k-1").symlink_to(tmp_path / "trap")  # what code in a sandbox would do
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "sock" / "k-1"))  # the relay's socket, relayed to the kernel's
        assert await accepted_soon(servers[0]) and not accepted(trap)

    sockets.detach()
    assert not (tmp_path / "sock" / "k-1").exists()
    await asyncio.sleep(0.1)  # (the relay's connections close as their tasks unwind)
    trap.close()


async def test_refusals(tmp_path: Path, kernel_dir: tuple[Path, list[socket.socket]]) -> None:
    run, servers = kernel_dir
    prefix = tmp_path / "sock" / "k"
    sockets = KernelSockets()

    def attach(**kwargs: object) -> None:
        fd = directory_fd(run)
        try:
            sockets.attach(fd, prefix, PORTS, owner=kwargs.pop("owner", os.getuid()), **kwargs)  # type: ignore[arg-type]
        finally:
            os.close(fd)

    with pytest.raises(SocketRefused, match="not to the kernel's uid"):
        attach(owner=os.getuid() + 12345)
    fd = directory_fd(run)
    recorded = sockets.attach(fd, prefix, PORTS, owner=os.getuid())
    os.close(fd)

    # Replaced by another socket (same name, same owner): refused where the recorded one is expected.
    servers[1].close()
    (run / "k-2").unlink()
    servers[1] = listening(run / "k-2")
    with pytest.raises(SocketRefused, match="not the socket the kernel bound"):
        attach(expect=recorded)
    # All or nothing: the earlier relays still stand.
    assert (tmp_path / "sock" / "k-1").is_socket()

    (run / "k-2").unlink()
    (run / "k-2").symlink_to(run / "k-1")
    with pytest.raises(SocketRefused, match="not a socket"):
        attach()
    (run / "k-2").unlink()
    (run / "k-2").write_text("a plain file")
    with pytest.raises(SocketRefused, match="not a socket"):
        attach()
    (run / "k-2").unlink()
    with pytest.raises(SocketNotBound):
        attach()

    # A directory on the way may not be a symlink either.
    (tmp_path / "elsewhere").symlink_to(run)
    start = directory_fd(tmp_path)
    with pytest.raises(SocketRefused, match="elsewhere"):
        open_directory(start, "elsewhere")
    with pytest.raises(ValueError):
        open_directory(start, "../run")
    os.close(start)
    sockets.detach()


async def test_detached_descriptors_close_after_the_grace(
    tmp_path: Path, kernel_dir: tuple[Path, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = kernel_dir
    sockets = KernelSockets()
    fd = directory_fd(run)
    sockets.attach(fd, tmp_path / "sock" / "k", PORTS, owner=os.getuid())
    os.close(fd)
    held = list(sockets._fds.values())
    monkeypatch.setattr(module, "GRACE", 0.0)
    sockets.detach()
    assert all(os.fstat(fd) for fd in held)  # still open: a connect may be resolving a link to them
    module._retire([])  # the next retirement closes those whose grace is over
    for fd in held:
        with pytest.raises(OSError):
            os.fstat(fd)


async def test_sandboxes_leave_no_descriptor_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kernel holds its sockets while it lives; deleted sandboxes give every descriptor back."""
    from tests.gateways import InProcessGateway, create

    monkeypatch.setattr(module, "GRACE", 0.0)
    async with InProcessGateway(tmp_path / "data") as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]  # (the first sandbox opens what every later one shares)
        assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            sid = (await create(alice))["id"]
            assert (await alice.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204
        module._retire([])
        assert len(os.listdir("/proc/self/fd")) <= before + 2


async def test_waiting_for_the_sockets_is_woken_by_their_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No poll needed: the pauses are an hour here, so only the directory's change can end the wait."""
    monkeypatch.setattr(module, "FIRST_PAUSE", 3600.0)
    monkeypatch.setattr(module, "MAX_PAUSE", 3600.0)
    run = tmp_path / "run"
    run.mkdir()
    sockets = KernelSockets()
    waiting = asyncio.ensure_future(
        sockets.attach_when_bound(lambda: directory_fd(run), tmp_path / "sock" / "k", PORTS, owner=os.getuid()))
    await asyncio.sleep(0)  # (it looked once, found nothing bound, and waits)
    assert not waiting.done()
    servers = [listening(run / f"k-{port}") for port in PORTS]
    try:
        async with asyncio.timeout(30):
            identities = await waiting
        assert set(identities) == set(PORTS)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "sock" / "k-1"))
        assert await accepted_soon(servers[0])
    finally:
        sockets.detach()
        await asyncio.sleep(0.1)  # (the relay's connections close as their tasks unwind)
        for server in servers:
            server.close()
