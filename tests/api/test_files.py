"""Files in a sandbox over REST, against real kernels on both provisioners: round trips, types,
listing, deletion, every path escape, limits, ownership, abandoned uploads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.api.test_errors import assert_error
from tests.gateways import KEYS, InProcessGateway
from tests.waiting import until
from tests.provisioned import PROVISIONERS, alice, bob, create, each_gateway, gateway_for, run  # noqa: F401


def files_url(sandbox_id: str, path: str = "") -> str:
    return f"/api/v1/sandboxes/{sandbox_id}/files" + (f"/{path}" if path else "")


async def raw_request(gateway: InProcessGateway, method: str, target: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """An HTTP request with ``target`` sent exactly as given (httpx would resolve ``..`` itself)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {KEYS['alice']}",
             "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload else {}


def all_bytes(size: int) -> bytes:
    """``size`` bytes holding every byte value, in a shuffled order."""
    rng = random.Random(size)
    block = bytearray(range(256)) * 64
    rng.shuffle(block)
    return (bytes(block) * (size // len(block) + 1))[:size]


async def test_binary_round_trip_and_code_sees_it(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    data = all_bytes(3 << 20)
    response = await alice.put(files_url(sandbox["id"], "data/blob.bin"), content=data)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["name"] == "blob.bin" and entry["path"] == "data/blob.bin"
    assert entry["type"] == "file" and entry["size"] == len(data) and entry["modified"].endswith("Z")

    # Code sees the upload at once, byte for byte.
    execution = await run(alice, sandbox["id"],
                          "import hashlib; print(hashlib.sha256(open('data/blob.bin', 'rb').read()).hexdigest())")
    assert execution["stdout"].strip() == hashlib.sha256(data).hexdigest()
    # ... and owns it, as if it had written it itself.
    owner = "import os; print(os.stat('data/blob.bin').st_uid == os.getuid(), os.access('data/blob.bin', os.W_OK))"
    assert (await run(alice, sandbox["id"], owner))["stdout"] == "True True\n"

    downloaded = await alice.get(files_url(sandbox["id"], "data/blob.bin"))
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == "application/octet-stream"
    assert downloaded.headers["content-length"] == str(len(data))
    assert downloaded.headers["content-disposition"].startswith('attachment; filename="blob.bin"')
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    # A file written by sandboxed code never runs as a page of the gateway's origin.
    assert downloaded.headers["content-security-policy"] == "sandbox; default-src 'none'"
    modified = datetime.fromisoformat(entry["modified"].replace("Z", "+00:00")).replace(microsecond=0)
    assert parsedate_to_datetime(downloaded.headers["last-modified"]) == modified

    replaced = await alice.put(files_url(sandbox["id"], "data/blob.bin"), content=b"short")
    assert replaced.status_code == 200 and replaced.json()["size"] == 5
    assert (await alice.get(files_url(sandbox["id"], "data/blob.bin"))).content == b"short"

    empty = await alice.put(files_url(sandbox["id"], "empty"), content=b"")
    assert empty.status_code == 201 and empty.json()["size"] == 0
    assert (await alice.get(files_url(sandbox["id"], "empty"))).content == b""


async def test_files_written_by_code_download_with_their_type(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = (
        "import json, os\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3]); plt.savefig('plot.png'); plt.close('all')\n"
        "open('table.csv', 'w').write('a,b\\n1,2\\n')\n"
        "open('page.html', 'w').write('<p>hi</p>')\n"
        "os.makedirs('deep/er', exist_ok=True)\n"
        "json.dump({'k': [1, 2]}, open('deep/er/v.json', 'w'))\n"
        "open('notes.txt', 'w', encoding='utf-8').write('h\\u00e9llo')\n"
        "open('sp ace & ü.txt', 'w').write('odd name')\n"
    )
    assert (await run(alice, sandbox["id"], code))["status"] == "completed"
    expected = {
        "plot.png": "image/png", "table.csv": "text/csv", "page.html": "text/html",
        "deep/er/v.json": "application/json", "notes.txt": "text/plain",
    }
    for path, media_type in expected.items():
        response = await alice.get(files_url(sandbox["id"], path))
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].split(";")[0] == media_type, path
    png = (await alice.get(files_url(sandbox["id"], "plot.png"))).content
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert (await alice.get(files_url(sandbox["id"], "deep/er/v.json"))).json() == {"k": [1, 2]}
    assert (await alice.get(files_url(sandbox["id"], "notes.txt"))).content.decode() == "h\u00e9llo"
    odd = await alice.get(files_url(sandbox["id"], "sp%20ace%20%26%20%C3%BC.txt"))
    assert odd.content == b"odd name"
    assert "filename*=UTF-8''sp%20ace%20%26%20%C3%BC.txt" in odd.headers["content-disposition"]


async def test_listing(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = (
        "import os\n"
        "os.makedirs('d/sub', exist_ok=True)\n"
        "open('d/one.txt', 'w').write('1')\n"
        "open('d/two.bin', 'wb').write(b'22')\n"
        "os.symlink('one.txt', 'd/link')\n"
    )
    assert (await run(alice, sandbox["id"], code))["status"] == "completed"
    listing = (await alice.get(files_url(sandbox["id"]), params={"path": "d"})).json()
    assert listing["path"] == "d" and listing["truncated"] is False
    entries = {e["name"]: e for e in listing["entries"]}
    assert sorted(entries) == ["link", "one.txt", "sub", "two.bin"]
    assert entries["one.txt"] == {**entries["one.txt"], "path": "d/one.txt", "type": "file", "size": 1}
    assert entries["two.bin"]["size"] == 2
    assert entries["sub"]["type"] == "directory" and entries["sub"]["size"] is None
    assert entries["link"]["type"] == "symlink"
    assert all(e["modified"].endswith("Z") for e in entries.values())

    root = await alice.get(files_url(sandbox["id"]))
    assert root.status_code == 200 and "d" in [e["name"] for e in root.json()["entries"]]
    assert (await alice.get(files_url(sandbox["id"]) + "/", params={"path": "d/sub"})).json()["entries"] == []

    not_dir = await alice.get(files_url(sandbox["id"]), params={"path": "d/one.txt"})
    assert not_dir.status_code == 400 and not_dir.json()["error"]["code"] == "invalid_path"
    missing = await alice.get(files_url(sandbox["id"]), params={"path": "nowhere"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    a_dir = await alice.get(files_url(sandbox["id"], "d"))
    assert a_dir.status_code == 400 and a_dir.json()["error"]["code"] == "invalid_path"


async def test_delete(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    await alice.put(files_url(sandbox["id"], "tree/a/b.txt"), content=b"b")
    await alice.put(files_url(sandbox["id"], "single.txt"), content=b"s")
    assert (await run(alice, sandbox["id"], "import os; os.symlink('/etc', 'etc-link')"))["status"] == "completed"

    gone = await alice.delete(files_url(sandbox["id"], "single.txt"))
    assert gone.status_code == 204 and gone.content == b""
    again = await alice.get(files_url(sandbox["id"], "single.txt"))
    assert again.status_code == 404 and again.json()["error"]["code"] == "file_not_found"
    assert (await alice.delete(files_url(sandbox["id"], "tree"))).status_code == 204
    # The link itself goes; what it points to is untouched.
    assert (await alice.delete(files_url(sandbox["id"], "etc-link"))).status_code == 204
    check = "import os; print(sorted(os.listdir('.')), os.path.exists('/etc/hostname') or os.path.exists('/etc/passwd'))"
    stdout = (await run(alice, sandbox["id"], check))["stdout"]
    names, etc_intact = stdout.rsplit(" ", 1)
    assert "tree" not in names and "single.txt" not in names and "etc-link" not in names
    assert etc_intact.strip() == "True"
    missing = await alice.delete(files_url(sandbox["id"], "single.txt"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"


ESCAPES_IN_URL = [
    "..", "../x", "a/../../x", "../../../../etc/passwd", "%2e%2e", "%2e%2e/x", "%2E%2E%2Fx",
    "a/%2e%2e/%2e%2e/x", "/etc/passwd", "%2Fetc%2Fpasswd", "a%00b", "a%FFb", "etc-link/passwd", "up/x", "up",
    "passwd-link",
]
ESCAPES_IN_QUERY = ["..", "../", "a/../..", "/etc", "/", "etc-link", "up", "a\x00b"]


async def test_every_path_escape_is_refused(each_gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = "import os; os.symlink('/etc', 'etc-link'); os.symlink('..', 'up'); os.symlink('/etc/passwd', 'passwd-link')"
    assert (await run(alice, sandbox["id"], code))["status"] == "completed"
    base = files_url(sandbox["id"])
    for path in ESCAPES_IN_URL:
        for method, body in (("GET", b""), ("PUT", b"pwned"), ("DELETE", b"")):
            if method == "DELETE" and path in ("up", "passwd-link"):
                continue  # deleting a link itself is allowed (and harmless)
            status, body_json = await raw_request(each_gateway, method, f"{base}/{path}", body)
            assert status == 400, (method, path, status, body_json)
            assert body_json["error"]["code"] == "invalid_path", (method, path, body_json)
    for path in ESCAPES_IN_QUERY:
        response = await alice.get(base, params={"path": path})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_path"
    # Nothing was written anywhere: not outside, not through a link.
    probe = ("import os; print(os.path.exists('/etc/pwned') or os.path.exists('../x') or os.path.exists('/x'), "
             "open('/etc/passwd').read().count('pwned'))")
    assert (await run(alice, sandbox["id"], probe))["stdout"].split() == ["False", "0"]


async def test_query_paths_are_taken_as_sent(each_gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    """``?path=`` is the path the client sent: spaces kept, other control characters kept, and a
    NUL or bytes that are not UTF-8 refused (Tornado's own reading strips the first and turns the
    others into spaces: ``data%00`` would have listed ``data ``)."""
    sandbox = await create(alice)
    base = files_url(sandbox["id"])
    for path, content in (("data /spaced.txt", b"s"), ("data/plain.txt", b"p"), ("data\x01/odd.txt", b"o")):
        assert (await alice.put(f"{base}/{quote(path)}", content=content)).status_code == 201
    for given, listed in (("data ", ["spaced.txt"]), ("data", ["plain.txt"]), ("data\x01", ["odd.txt"])):
        response = await alice.get(base, params={"path": given})
        assert response.status_code == 200, (given, response.text)
        assert (response.json()["path"], [e["name"] for e in response.json()["entries"]]) == (given, listed)
    names = sorted(e["name"] for e in (await alice.get(base)).json()["entries"])
    assert names == sorted(["data", "data ", "data\x01"])
    for query, problem in (("data%00", "NUL"), ("data%20%00", "NUL"), ("%FF", "not valid UTF-8"),
                           ("data%C3", "not valid UTF-8")):
        status, answer = await raw_request(each_gateway, "GET", f"{base}?path={query}")
        assert (status, answer["error"]["code"]) == (400, "invalid_path"), (query, answer)
        assert problem in answer["error"]["message"] and "'path'" in answer["error"]["message"], answer
    # The same in the URL's path: a byte that is not UTF-8 is invalid_path too (and nothing is written).
    status, answer = await raw_request(each_gateway, "PUT", f"{base}/data%FF.txt", b"x")
    assert (status, answer["error"]["code"]) == (400, "invalid_path"), answer
    assert "not valid UTF-8" in answer["error"]["message"]
    assert sorted(e["name"] for e in (await alice.get(base)).json()["entries"]) == names


async def test_missing_files_and_sandboxes(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    missing = await alice.get(files_url(sandbox["id"], "no/such/file"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    # Someone else's sandbox looks exactly like one that does not exist.
    for response in (
        await bob.get(files_url(sandbox["id"], "x")),
        await bob.put(files_url(sandbox["id"], "x"), content=b"x"),
        await bob.delete(files_url(sandbox["id"], "x")),
        await bob.get(files_url(sandbox["id"])),
        await alice.get(files_url("00000000-0000-0000-0000-000000000000", "x")),
        await alice.put(files_url("00000000-0000-0000-0000-000000000000", "x"), content=b"x"),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "sandbox_not_found"
    async with httpx.AsyncClient(base_url=str(alice.base_url)) as anonymous:
        unauthenticated = await anonymous.get(files_url(sandbox["id"], "x"))
    assert unauthenticated.status_code == 401
    # Files of an ended sandbox are gone with it.
    assert (await alice.delete(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 204
    ended = await alice.put(files_url(sandbox["id"], "x"), content=b"x")
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "sandbox_not_running"


@pytest.mark.parametrize("provisioner", PROVISIONERS)
async def test_size_limit(provisioner: str, tmp_path: Any) -> None:
    limit = 1 << 20
    async with gateway_for(provisioner, tmp_path, f"--max-file-bytes={limit}") as gateway, gateway.client() as client:
        sandbox = await create(client)
        over = await client.put(files_url(sandbox["id"], "big"), content=b"x" * (limit + 1))
        assert over.status_code == 413 and over.json()["error"]["code"] == "file_too_large"
        assert "1048576" in over.json()["error"]["message"]

        async def chunked() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(5):
                yield b"y" * (limit // 4)

        streamed = await client.put(files_url(sandbox["id"], "big"), content=chunked())
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "file_too_large"
        at_limit = await client.put(files_url(sandbox["id"], "ok"), content=b"z" * limit)
        assert at_limit.status_code == 201

        async def small_chunks() -> Any:
            for _ in range(4):
                yield b"c" * 1000

        chunked_ok = await client.put(files_url(sandbox["id"], "chunked"), content=small_chunks())
        assert chunked_ok.status_code == 201 and chunked_ok.json()["size"] == 4000
        assert (await client.delete(files_url(sandbox["id"], "chunked"))).status_code == 204
        listing = (await client.get(files_url(sandbox["id"]))).json()["entries"]
        assert [e["name"] for e in listing] == ["ok"]  # nothing left of the refused uploads

        assert (await run(client, sandbox["id"], f"open('made', 'wb').write(b'm' * {limit + 1})"))["status"] == "completed"
        too_big = await client.get(files_url(sandbox["id"], "made"))
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"


async def test_abandoned_upload_leaves_nothing(each_gateway: InProcessGateway, alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    await alice.put(files_url(sandbox["id"], "keep.bin"), content=b"old")
    port = int(each_gateway.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    target = files_url(sandbox["id"], "keep.bin")
    writer.write(f"PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['alice']}\r\n"
                 f"Content-Length: {4 << 20}\r\n\r\n".encode() + b"n" * (1 << 20))
    await writer.drain()

    async def names() -> list[str]:
        return [e["name"] for e in (await alice.get(files_url(sandbox["id"]))).json()["entries"]]

    # The upload is under way (its temporary file is in the directory), then the client goes away.
    await until(names, lambda seen: any(n.startswith(".keep.bin.upload-") for n in seen), what="the upload to start")
    writer.close()
    await until(names, lambda seen: seen == ["keep.bin"], what="the abandoned upload to be removed")
    assert (await alice.get(files_url(sandbox["id"], "keep.bin"))).content == b"old"


#: Code that SIGKILLs the sandbox's file tools running in its working directory; prints how many.
KILL_TOOLS = (
    "import os, signal\nkilled = 0\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        mine = os.readlink(f'/proc/{pid}/cwd') == os.getcwd()\n"
    "        tool = b'File operations inside a sandbox' in open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "    except OSError:\n"
    "        continue\n"
    "    if mine and tool:\n"
    "        os.kill(int(pid), signal.SIGKILL); killed += 1\n"
    "print(killed)"
)


async def test_an_upload_whose_tool_is_killed_leaves_nothing(each_gateway: InProcessGateway,
                                                              alice: httpx.AsyncClient) -> None:
    """The sandbox's code kills the tool mid-upload, after it made its temporary file: the client
    gets 502 at once — locally the tool's pipe tells of its death; through ``docker exec``, which
    takes input after its process died, the engine does, asked when the write stalls — not 504
    after ``tool_timeout``, and the gateway removes that file (a killed tool cannot)."""
    each_gateway.app.files.tool_timeout = 60.0
    sandbox = await create(alice)
    await alice.put(files_url(sandbox["id"], "keep.bin"), content=b"old")
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"n" * (1 << 20)
        await go_on.wait()
        for _ in range(3):
            yield b"n" * (1 << 20)

    upload = asyncio.ensure_future(alice.put(files_url(sandbox["id"], "keep.bin"), content=body(),
                                             headers={"Content-Length": str(4 << 20)}))

    async def names() -> list[str]:
        return [e["name"] for e in (await alice.get(files_url(sandbox["id"]))).json()["entries"]]

    await until(names, lambda seen: any(n.startswith(".keep.bin.upload-") for n in seen), what="the upload to start")
    assert (await run(alice, sandbox["id"], KILL_TOOLS))["stdout"] == "1\n"
    go_on.set()
    response = await upload
    assert_error(response, 502, "file_operation_failed")
    await until(names, lambda seen: seen == ["keep.bin"], what="the killed upload's file to be removed")
    assert (await alice.get(files_url(sandbox["id"], "keep.bin"))).content == b"old"


async def test_files_are_the_working_directory_of_code(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    await alice.put(files_url(sandbox["id"], "in.csv"), content=b"x,y\n1,2\n3,4\n")
    code = (
        "import pandas as pd\n"
        "df = pd.read_csv('in.csv'); df['z'] = df.x + df.y; df.to_csv('out.csv', index=False)\n"
        "import os; print(os.getcwd() == os.path.realpath(os.path.expanduser('~')) or os.getcwd())"
    )
    assert (await run(alice, sandbox["id"], code))["status"] == "completed"
    assert (await alice.get(files_url(sandbox["id"], "out.csv"))).text == "x,y,z\n1,2,3\n3,4,7\n"


@pytest.mark.docker
@pytest.mark.parametrize("provisioner", ["docker"])
async def test_full_disk_is_507_and_leaves_nothing(provisioner: str, tmp_path: Any) -> None:
    async with gateway_for(provisioner, tmp_path) as gateway, gateway.client() as client:
        sandbox = await create(client, resources={"disk_mb": 16})
        response = await client.put(files_url(sandbox["id"], "huge.bin"), content=b"h" * (24 << 20))
        assert response.status_code == 507 and response.json()["error"]["code"] == "disk_full"
        names = [e["name"] for e in (await client.get(files_url(sandbox["id"]))).json()["entries"]]
        assert "huge.bin" not in names and not [n for n in names if "upload" in n]
        # The sandbox still works, with its disk free again.
        assert (await client.put(files_url(sandbox["id"], "small"), content=b"s")).status_code == 201
