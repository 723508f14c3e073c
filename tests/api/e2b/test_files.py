"""``sandbox.files`` through the real SDK: envd's /files (upload, download) and its filesystem RPC.

Paths are E2B's (``/home/user/...`` or relative to it): the sandbox's working directory. Errors
are E2B's exceptions: ``FileNotFoundException``, ``InvalidArgumentException`` (a path outside
the working directory), and a file over the gateway's size limit is refused.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx
import pytest
from e2b import FileNotFoundException, FileType, FilesystemEventType, InvalidArgumentException, SandboxException
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.api.e2b.conftest import MAX_FILE_BYTES, envd_headers
from tests.gateways import GatewayProcess

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600)
    yield created
    created.kill()


def test_round_trips(sandbox: Sandbox, ours: httpx.Client) -> None:
    info = sandbox.files.write("/home/user/notes/a.txt", "hello\n")
    assert (info.name, info.path, info.type) == ("a.txt", "/home/user/notes/a.txt", FileType.FILE)
    assert sandbox.files.read("notes/a.txt") == "hello\n"
    payload = bytes(range(256)) * 1000
    written = sandbox.files.write_files([{"path": "bin/data.bin", "data": payload},
                                         {"path": "/home/user/bin/other.txt", "data": io.BytesIO(b"streamed")}])
    assert [w.path for w in written] == ["/home/user/bin/data.bin", "/home/user/bin/other.txt"]
    assert bytes(sandbox.files.read("bin/data.bin", format="bytes")) == payload
    assert b"".join(sandbox.files.read("/home/user/bin/data.bin", format="stream")) == payload
    # The kernel sees the same files (its working directory), and so does our own API.
    assert sandbox.run_code("open('notes/a.txt').read()").text == "hello\\n"
    sandbox.run_code("open('from_kernel.csv', 'w').write('x,y\\n1,2\\n')")
    assert sandbox.files.read("/home/user/from_kernel.csv") == "x,y\n1,2\n"
    assert ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/files/bin/other.txt").content == b"streamed"


def test_listing_info_and_changes(sandbox: Sandbox) -> None:
    sandbox.files.write("tree/a/b/c.txt", "c")
    sandbox.files.write("tree/top.txt", "top")
    shallow = sandbox.files.list("/home/user/tree")
    assert [(e.name, e.type) for e in shallow] == [("a", FileType.DIR), ("top.txt", FileType.FILE)]
    deep = sandbox.files.list("tree", depth=3)
    assert [e.path for e in deep] == ["/home/user/tree/a", "/home/user/tree/a/b", "/home/user/tree/a/b/c.txt",
                                      "/home/user/tree/top.txt"]
    info = sandbox.files.get_info("tree/top.txt")
    assert (info.size, info.type, info.owner, info.permissions) == (3, FileType.FILE, "sandbox", "-rw-r--r--")
    assert sandbox.files.exists("tree/top.txt") and not sandbox.files.exists("tree/nothing")
    assert sandbox.files.make_dir("tree/new") is True
    assert sandbox.files.make_dir("tree/new") is False  # it is there already
    moved = sandbox.files.rename("tree/top.txt", "/home/user/tree/new/moved.txt")
    assert moved.path == "/home/user/tree/new/moved.txt" and not sandbox.files.exists("tree/top.txt")
    sandbox.files.remove("tree/a")
    assert [e.name for e in sandbox.files.list("tree")] == ["new"]


def test_errors_are_e2b_exceptions(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("/home/user/missing.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("missing")
    with pytest.raises(InvalidArgumentException, match="outside /home/user"):
        sandbox.files.read("/etc/passwd")
    with pytest.raises(InvalidArgumentException, match="outside /home/user"):
        sandbox.files.write("/home/user/../../etc/evil", "x")
    with pytest.raises(InvalidArgumentException, match="outside /home/user"):
        sandbox.files.list("/")
    with pytest.raises(InvalidArgumentException, match="outside /home/user"):
        sandbox.files.exists("/home/user/../../etc/evil")


def test_paths_are_taken_as_sent(sandbox: Sandbox) -> None:
    """envd's ``?path=`` as sent: a trailing space names another file; a NUL, bytes that are not
    UTF-8, or no path where one is needed are 400 (E2B's error shape) and write nothing."""
    sandbox.files.write("spaced/name.txt ", "with")
    sandbox.files.write("spaced/name.txt", io.BytesIO(b"without"))  # (application/octet-stream)
    sandbox.files.write("spaced/other ", io.BytesIO(b"other"))
    assert sandbox.files.read("spaced/name.txt ") == "with" and sandbox.files.read("spaced/name.txt") == "without"
    assert sandbox.files.read("/home/user/spaced/other ") == "other"
    assert sorted(e.name for e in sandbox.files.list("spaced")) == ["name.txt", "name.txt ", "other "]
    files = f"{sandbox.envd_api_url}/files"
    upload = {**envd_headers(sandbox), "Content-Type": "application/octet-stream"}
    for query, problem in (("spaced/x%00", "contains a NUL"), ("spaced/%FF", "not valid UTF-8")):
        for response in (httpx.get(f"{files}?path={query}", headers=envd_headers(sandbox)),
                         httpx.post(f"{files}?path={query}", content=b"x", headers=upload)):
            assert response.status_code == 400, (query, response.text)
            assert response.json()["code"] == 400 and problem in response.json()["message"], response.text
    for response in (httpx.get(files, headers=envd_headers(sandbox)), httpx.post(files, content=b"x", headers=upload)):
        assert response.status_code == 400 and "'path' is required" in response.json()["message"], response.text
    assert sorted(e.name for e in sandbox.files.list("spaced")) == ["name.txt", "name.txt ", "other "]


def test_size_limit(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxException, match="413"):
        sandbox.files.write("big.bin", b"x" * (MAX_FILE_BYTES + 1))
    assert not sandbox.files.exists("big.bin")
    sandbox.run_code(f"open('made.bin', 'wb').write(b'y' * {MAX_FILE_BYTES + 1})")
    with pytest.raises(SandboxException, match="413"):
        sandbox.files.read("made.bin", format="bytes")


def test_watch_dir(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("watched")
    handle = sandbox.files.watch_dir("/home/user/watched")
    try:
        sandbox.files.write("watched/new.txt", "1")
        sandbox.files.write("elsewhere.txt", "not seen")
        events = handle.get_new_events()
        assert [(e.name, e.type) for e in events] == [("new.txt", FilesystemEventType.CREATE)]
        sandbox.files.write("watched/new.txt", "22")
        sandbox.files.remove("watched/new.txt")
        assert [(e.name, e.type) for e in handle.get_new_events()] == [("new.txt", FilesystemEventType.REMOVE)]
    finally:
        handle.stop()


async def test_async_files_and_watch(e2b_gateway: GatewayProcess) -> None:
    sandbox = await AsyncSandbox.create(timeout=300)
    try:
        await sandbox.files.write("a.txt", "async")
        assert await sandbox.files.read("/home/user/a.txt") == "async"
        assert [e.name for e in await sandbox.files.list("/home/user")] == ["a.txt"]
        seen: asyncio.Queue[object] = asyncio.Queue()
        handle = await sandbox.files.watch_dir("/home/user", on_event=seen.put_nowait, recursive=True)
        try:
            await sandbox.files.write("sub/b.txt", "b")
            names = set()
            while "sub/b.txt" not in names:
                event = await asyncio.wait_for(seen.get(), 30)
                names.add(event.name)  # type: ignore[attr-defined]
            assert names <= {"sub", "sub/b.txt"}
        finally:
            await handle.stop()
    finally:
        await sandbox.kill()
