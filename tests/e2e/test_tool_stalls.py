"""Attacks on the in-sandbox file tool from the sandbox itself: stopping it, and planting programs for it.

The tool runs as the sandbox's user, so code in the sandbox can SIGSTOP it, and used to start it
with the user's own environment (``PATH``, ``LD_PRELOAD``). Here a sandbox stops every tool the
gateway starts in it while another user creates, uses and deletes sandboxes as usual; its own
stalled requests end once the tools go on, or with a clear error after ``tool_timeout``; and the
tool never runs with anything the user planted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateways import InProcessGateway, create, run
from tests.provisioned import RUNTIMES, docker_or_fail
from tests.waiting import until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(400)]

LIBRARY = "/usr/lib/x86_64-linux-gnu/libpng16.so.16"  # in the image; nothing of the tool's loads it
TRICKS = {"LD_PRELOAD": LIBRARY, "PATH": "/home/sandbox/bin:/usr/bin:/bin", "PYTHONPATH": "/home/sandbox/lib"}

#: Programs and modules a tool would run if it followed the user's environment; each leaves a mark.
PLANT = r'''
import os
for _dir in ("bin", "lib"):
    os.makedirs(_dir, exist_ok=True)
for _name in ("python3", "env"):
    with open(f"bin/{_name}", "w") as _f:
        _f.write(f"#!/bin/sh\ntouch /home/sandbox/ran-fake-{_name}\nexec /usr/bin/{_name} \"$@\"\n")
    os.chmod(f"bin/{_name}", 0o755)
for _where in ("lib", "."):
    with open(f"{_where}/json.py", "w") as _f:
        _f.write("open('/home/sandbox/ran-fake-json', 'w').close()\nraise ImportError('planted')\n")
'''

#: A thread in the kernel that records every other process it sees (command, environment, loaded
#: libraries) and, while ``_stopping`` is set, SIGSTOPs each Python process: the file tool.
WATCH = r'''
import os, signal, threading, time
_me = os.getpid()
_seen, _stopped = {}, set()
_stopping = threading.Event()
_stopping.set()
def _record(pid):
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    if not argv[0]:
        return None
    key = f"{pid}:{argv[0].decode()}"
    if key not in _seen:
        _seen[key] = {
            "argv": [a.decode(errors="replace") for a in argv[:4]],
            "environ": sorted(e.decode() for e in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if e),
            "libraries": sorted({line.split()[-1] for line in open(f"/proc/{pid}/maps") if ".so" in line}),
        }
    return argv[0]
def _watch():
    while True:
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, _me):
                continue
            try:
                program = _record(int(name))
                if program is not None and program.endswith(b"python3") and _stopping.is_set():
                    os.kill(int(name), signal.SIGSTOP)
                    _stopped.add(int(name))
            except (OSError, IndexError, UnicodeDecodeError):
                pass
        time.sleep(0.002)
threading.Thread(target=_watch, daemon=True).start()
def _paused():
    return sum(1 for p in list(_stopped) if os.path.exists(f"/proc/{p}")
               and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
'''


@pytest.fixture
async def gateway(tmp_path: Any) -> AsyncIterator[InProcessGateway]:
    docker_or_fail().close()
    async with InProcessGateway(tmp_path / "data", "--SandboxFiles.tool_timeout=300", provisioner="docker") as running:
        yield running


async def held_upload(client: httpx.AsyncClient, sandbox_id: str, path: str, release: asyncio.Event) -> httpx.Response:
    """PUT a file whose body waits for ``release``: the gateway starts the tool at once, and it waits for input."""

    async def body() -> AsyncIterator[bytes]:
        yield b"first "
        await release.wait()
        yield b"last"

    return await client.put(f"/api/v1/sandboxes/{sandbox_id}/files/{path}", content=body(), timeout=600)


async def paused(client: httpx.AsyncClient, sandbox_id: str) -> int:
    return int((await run(client, sandbox_id, "print(_paused())"))["stdout"])


async def a_stopped_tool_times_out(alice: httpx.AsyncClient, sid: str) -> None:
    """An upload whose tool the sandbox stops (``WATCH``) ends with a 504 after ``tool_timeout``
    (3 s), and the tool is killed: no stopped one is left."""
    release = asyncio.Event()
    stalled = asyncio.create_task(held_upload(alice, sid, "stalled.txt", release))
    await until(lambda: paused(alice, sid), lambda n: n == 1, what="a stopped tool", timeout=120)
    release.set()
    response = await stalled
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "file_operation_timeout"
    assert "did not answer the file operation within 3 s" in response.json()["error"]["message"]
    await until(lambda: paused(alice, sid), lambda n: n == 0, what="the stopped tool killed")


async def an_ordinary_session(bob: httpx.AsyncClient) -> None:
    """What another user does meanwhile: each step must simply work."""
    sid = (await create(bob))["id"]
    assert (await run(bob, sid, "6 * 7"))["result"] == {"text/plain": "42"}
    assert (await bob.put(f"/api/v1/sandboxes/{sid}/files/notes.txt", content=b"hello")).status_code == 201
    listing = (await bob.get(f"/api/v1/sandboxes/{sid}/files")).json()
    assert [e["name"] for e in listing["entries"]] == ["notes.txt"]
    assert (await bob.get(f"/api/v1/sandboxes/{sid}/files/notes.txt")).content == b"hello"
    assert (await bob.delete(f"/api/v1/sandboxes/{sid}")).status_code == 204


async def test_a_sandbox_stopping_its_tools_stalls_only_itself(gateway: InProcessGateway) -> None:
    async with gateway.client("alice") as alice, gateway.client("bob") as bob:
        sid = (await create(alice, env=TRICKS))["id"]
        assert (await run(alice, sid, PLANT + WATCH))["status"] == "completed"

        # Twelve uploads: eight tools start (the per-sandbox limit) and are stopped; four wait for a turn.
        release = asyncio.Event()
        uploads = [asyncio.create_task(held_upload(alice, sid, f"f{n}.txt", release)) for n in range(12)]
        await until(lambda: paused(alice, sid), lambda n: n == 8, what="eight stopped tools", timeout=120)
        release.set()  # the gateway now waits for the stopped tools' answers

        await an_ordinary_session(bob)
        async with gateway.client(None) as anonymous:
            assert (await anonymous.get("/health")).status_code == 200
        assert not any(upload.done() for upload in uploads), [u.result() for u in uploads if u.done()]

        # Once the tools may go on, every upload completes.
        await run(alice, sid, "_stopping.clear()\nfor _p in _stopped: os.kill(_p, signal.SIGCONT)")
        responses = await asyncio.gather(*uploads)
        assert [r.status_code for r in responses] == [201] * 12, [r.text for r in responses]
        assert (await alice.get(f"/api/v1/sandboxes/{sid}/files/f3.txt")).content == b"first last"

        # A tool stopped for good: the request ends with a clear error, and the tool is killed.
        gateway.app.files.tool_timeout = 3.0
        await run(alice, sid, "_stopping.set()")
        await a_stopped_tool_times_out(alice, sid)
        # The same while the body is still arriving: the gateway's writes stall, and the client
        # still gets the answer (once its body is sent), not a dropped connection.
        stalled_write = await alice.put(f"/api/v1/sandboxes/{sid}/files/stalled-write.bin", content=b"w" * (64 << 20),
                                        timeout=600)
        assert stalled_write.status_code == 504, stalled_write.text
        assert stalled_write.json()["error"]["code"] == "file_operation_timeout"
        # The killed tool may have made its temporary file before it was stopped: once the sandbox
        # lets its tools run again, the one the gateway starts to discard it removes it.
        # (the pause lets a stop the watcher is making as it sees the clear be recorded first)
        await run(alice, sid, "_stopping.clear()\ntime.sleep(0.1)\nfor _p in _stopped: os.kill(_p, signal.SIGCONT)")
        await until(lambda: paused(alice, sid), lambda n: n == 0, what="no stopped tool")

        async def listed() -> list[str]:
            return [e["name"] for e in (await alice.get(f"/api/v1/sandboxes/{sid}/files")).json()["entries"]]

        names = await until(listed, lambda seen: not [name for name in seen if "upload" in name],
                            what="no temporary file of an upload left")
        assert "stalled.txt" not in names and "stalled-write.bin" not in names and "f11.txt" in names

        # Nothing the user planted ever ran, and the tool had none of the user's environment.
        assert not any(name.startswith("ran-fake") for name in names), names
        seen = json.loads((await run(alice, sid, "import json; print(json.dumps(list(_seen.values())))"))["stdout"])
        tools = [p for p in seen if p["argv"][0] == "/usr/bin/python3"]
        assert len(tools) >= 9, seen  # (at least those that waited for their input: all the stopped ones)
        for tool in tools:
            assert tool["argv"] == ["/usr/bin/python3", "-I", "-S", "-c"], tool["argv"]
            assert tool["environ"] == ["HOME=/home/sandbox", "LANG=C.UTF-8", "PATH=/usr/bin:/bin"], tool["environ"]
        for process in seen:
            assert not any("LD_PRELOAD" in e or "/home/sandbox/bin" in e for e in process["environ"]), process
            assert not any("libpng16" in library for library in process["libraries"]), process


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_stopped_tool_is_killed_at_its_timeout(tmp_path: Any, runtime: str) -> None:
    """Under either runtime the killed tool is gone from the sandbox (under gVisor, killing the
    exec's host process, runsc's, would leave it there: it is killed inside)."""
    docker_or_fail().close()
    async with InProcessGateway(tmp_path / "data", f"--runtime={runtime}", "--SandboxFiles.tool_timeout=3",
                                provisioner="docker") as gateway, gateway.client("alice") as alice:
        sid = (await create(alice))["id"]
        assert (await run(alice, sid, WATCH))["status"] == "completed"
        await a_stopped_tool_times_out(alice, sid)
        # Stopped while the gateway still writes to it (none of its output read yet): killed too.
        stalled_write = await alice.put(f"/api/v1/sandboxes/{sid}/files/stalled-write.bin", content=b"w" * (64 << 20),
                                        timeout=600)
        assert stalled_write.status_code == 504, stalled_write.text
        await until(lambda: paused(alice, sid), lambda n: n == 0, what="the stopped tool killed")
        alive = "print(sum(1 for p in _stopped if os.path.exists(f'/proc/{p}') and "\
                "open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z'))"
        # (the tool the gateway then starts to discard the upload's file is stopped too, and killed
        # at its own timeout: every stopped tool is gone within it)
        await run(alice, sid, "_stopping.clear()")
        await until(lambda: run(alice, sid, alive), lambda answer: answer["stdout"] == "0\n",
                    what="every stopped tool gone", timeout=30)
        names = [e["name"] for e in (await alice.get(f"/api/v1/sandboxes/{sid}/files")).json()["entries"]]
        assert "stalled.txt" not in names and "stalled-write.bin" not in names, names
