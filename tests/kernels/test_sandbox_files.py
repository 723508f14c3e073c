"""kernels/tools/sandbox_files.py on its own: the protocol, confinement, and what it leaves behind."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[2] / "kernels" / "tools" / "sandbox_files.py"


def frames(data: bytes, size: int = 1000, end: bool = True) -> bytes:
    out = b"".join(struct.pack(">I", len(data[i:i + size])) + data[i:i + size] for i in range(0, len(data), size))
    return out + (struct.pack(">I", 0) if end else b"")


def tool(workdir: Path, request: dict[str, Any], body: bytes = b"", timeout: float = 10) -> tuple[dict[str, Any], bytes]:
    """Run the tool in ``workdir``: its answer line and whatever followed it."""
    done = subprocess.run(
        [sys.executable, "-I", str(TOOL)], cwd=workdir, input=json.dumps(request).encode() + b"\n" + body,
        capture_output=True, timeout=timeout, env={"PATH": os.environ["PATH"]},
    )
    line, _, rest = done.stdout.partition(b"\n")
    answer = json.loads(line)
    assert (done.returncode == 0) == answer["ok"], done
    return answer, rest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_write_read_list_delete(workdir: Path) -> None:
    data = bytes(range(256)) * 300
    answer, _ = tool(workdir, {"op": "write", "path": "a/b/c.bin"}, frames(data))
    assert answer["ok"] and answer["created"] and answer["size"] == len(data) and answer["type"] == "file"
    assert (workdir / "a/b/c.bin").read_bytes() == data
    answer, _ = tool(workdir, {"op": "write", "path": "a/b/c.bin"}, frames(b"new"))
    assert answer["created"] is False and (workdir / "a/b/c.bin").read_bytes() == b"new"

    answer, rest = tool(workdir, {"op": "read", "path": "a/b/c.bin"})
    assert answer["size"] == 3 and rest == b"new"

    (workdir / "a" / "link").symlink_to("b")
    answer, _ = tool(workdir, {"op": "list", "path": "a"})
    assert [(e["name"], e["type"], e["path"]) for e in answer["entries"]] == [("b", "directory", "a/b"), ("link", "symlink", "a/link")]
    assert answer["entries"][0]["size"] is None and answer["entries"][0]["modified"].endswith("Z")
    answer, rest = tool(workdir, {"op": "read", "path": "a/link/c.bin"})  # a symlink that stays inside is followed
    assert rest == b"new"

    answer, _ = tool(workdir, {"op": "delete", "path": "a"})
    assert answer["type"] == "directory" and not (workdir / "a").exists()


def test_abandoned_upload_writes_nothing(workdir: Path) -> None:
    (workdir / "keep.txt").write_bytes(b"old")
    answer, _ = tool(workdir, {"op": "write", "path": "keep.txt"}, frames(b"x" * 5000, end=False))
    assert answer == {"ok": False, "error": "bad_request", "message": "the upload was abandoned before its end"}
    assert (workdir / "keep.txt").read_bytes() == b"old"
    assert sorted(os.listdir(workdir)) == ["keep.txt"]  # no temporary file left


def test_a_killed_uploads_temporary_file_is_named_by_its_token_and_discarded(workdir: Path) -> None:
    """A tool killed mid-upload cannot clean up: the gateway names its temporary file (``token``)
    and removes it with ``discard``, which touches nothing else."""
    process = subprocess.Popen([sys.executable, "-I", str(TOOL)], cwd=workdir, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={"PATH": os.environ["PATH"]})
    assert process.stdin is not None
    process.stdin.write(json.dumps({"op": "write", "path": "d/big.bin", "token": "00ff"}).encode() + b"\n")
    process.stdin.write(frames(b"x" * 5000, end=False))
    process.stdin.flush()
    left = workdir / "d" / ".big.bin.upload-00ff"
    for _ in range(500):
        if left.exists() and left.stat().st_size == 5000:
            break
        subprocess.run(["sleep", "0.01"])
    process.kill()
    process.wait()
    (workdir / "d" / ".big.bin.upload-1234").write_bytes(b"another upload's")
    assert left.exists()
    assert tool(workdir, {"op": "discard", "path": "d/big.bin", "token": "00ff"})[0] == {"ok": True, "discarded": True}
    assert sorted(os.listdir(workdir / "d")) == [".big.bin.upload-1234"]
    assert tool(workdir, {"op": "discard", "path": "d/big.bin", "token": "00ff"})[0] == {"ok": True, "discarded": False}
    for token in ("", "../x", "00FF", "0" * 33, 7, None):
        answer, _ = tool(workdir, {"op": "discard", "path": "d/big.bin", "token": token})
        assert answer["error"] == "bad_request", answer
        answer, _ = tool(workdir, {"op": "write", "path": "d/other", "token": token}, frames(b"x"))
        assert answer["error"] == "bad_request", answer
    assert sorted(os.listdir(workdir / "d")) == [".big.bin.upload-1234"]


def test_upload_over_the_limit_is_refused_and_cleaned_up(workdir: Path) -> None:
    answer, _ = tool(workdir, {"op": "write", "path": "big", "max_bytes": 2500}, frames(b"x" * 3000))
    assert answer["error"] == "too_large"
    assert os.listdir(workdir) == []
    answer, _ = tool(workdir, {"op": "write", "path": "ok", "max_bytes": 3000}, frames(b"x" * 3000))
    assert answer["ok"]
    answer, _ = tool(workdir, {"op": "read", "path": "ok", "max_bytes": 2999})
    assert answer["error"] == "too_large"


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "a/..", "/etc/passwd", "\\x", "a\x00b"])
@pytest.mark.parametrize("op", ["read", "write", "list", "delete", "stat", "mkdir", "move", "discard"])
def test_escaping_paths_are_refused(workdir: Path, op: str, path: str) -> None:
    answer, _ = tool(workdir, {"op": op, "path": path}, frames(b"x"))
    assert answer["error"] == "invalid_path", answer


def test_symlinks_out_of_the_directory_are_refused(workdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (workdir / "out").symlink_to(outside)
    (workdir / "up").symlink_to("..")
    (workdir / "secret-link").symlink_to(outside / "secret")
    for op, path in [("read", "out/secret"), ("read", "up/outside/secret"), ("read", "secret-link"),
                     ("list", "out"), ("list", "up"), ("write", "out/new"), ("write", "secret-link"),
                     ("write", "up/new"), ("delete", "out/secret")]:
        answer, rest = tool(workdir, {"op": op, "path": path}, frames(b"pwned"))
        assert answer["error"] == "invalid_path", (op, path, answer)
        assert rest == b""
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_text() == "secret"
    assert not (tmp_path / "new").exists()
    # Deleting the link removes the link, never what it points to.
    answer, _ = tool(workdir, {"op": "delete", "path": "out"})
    assert answer["ok"] and answer["type"] == "symlink"
    assert (outside / "secret").exists()


def test_special_files_and_directories_are_refused_without_blocking(workdir: Path) -> None:
    os.mkfifo(workdir / "fifo")
    (workdir / "dir").mkdir()
    assert tool(workdir, {"op": "read", "path": "fifo"})[0]["error"] == "invalid_path"
    assert tool(workdir, {"op": "read", "path": "dir"})[0]["error"] == "invalid_path"
    assert tool(workdir, {"op": "read", "path": ""})[0]["error"] == "invalid_path"
    assert tool(workdir, {"op": "write", "path": "dir"}, frames(b"x"))[0]["error"] == "invalid_path"
    assert tool(workdir, {"op": "delete", "path": "."})[0]["error"] == "invalid_path"
    assert tool(workdir, {"op": "list", "path": "fifo"})[0]["error"] == "invalid_path"
    (workdir / "file").write_text("x")
    assert tool(workdir, {"op": "write", "path": "file/below"}, frames(b"x"))[0]["error"] == "invalid_path"


def test_missing_paths(workdir: Path) -> None:
    for op in ("read", "list", "delete"):
        assert tool(workdir, {"op": op, "path": "nope/nothing"})[0]["error"] == "file_not_found"


def test_bad_requests(workdir: Path) -> None:
    done = subprocess.run([sys.executable, "-I", str(TOOL)], cwd=workdir, input=b"not json\n", capture_output=True)
    assert json.loads(done.stdout)["error"] == "bad_request"
    assert tool(workdir, {"op": "chmod", "path": "x"})[0]["error"] == "bad_request"
    assert tool(workdir, {"op": "read", "path": 7})[0]["error"] == "bad_request"


def test_stat_mkdir_move_and_deep_lists(workdir: Path) -> None:
    made, _ = tool(workdir, {"op": "mkdir", "path": "x/y"})
    assert made["created"] is True and made["type"] == "directory" and made["permissions"].startswith("d")
    assert tool(workdir, {"op": "mkdir", "path": "x/y"})[0]["created"] is False
    tool(workdir, {"op": "write", "path": "x/y/f.txt"}, frames(b"data"))
    (workdir / "x" / "to-f").symlink_to("y/f.txt")
    found, _ = tool(workdir, {"op": "stat", "path": "x/to-f"})
    assert (found["type"], found["symlink_target"], found["name"]) == ("symlink", "y/f.txt", "to-f")
    found, _ = tool(workdir, {"op": "stat", "path": "x/y/f.txt"})
    assert (found["size"], found["mode"] & 0o600, found["path"]) == (4, 0o600, "x/y/f.txt") and found["owner"]
    assert tool(workdir, {"op": "stat", "path": "nope"})[0]["error"] == "file_not_found"
    shallow, _ = tool(workdir, {"op": "list", "path": "x"})
    assert [e["path"] for e in shallow["entries"]] == ["x/to-f", "x/y"]
    deep, _ = tool(workdir, {"op": "list", "path": "", "depth": 3})
    assert [e["path"] for e in deep["entries"]] == ["x", "x/to-f", "x/y", "x/y/f.txt"]
    moved, _ = tool(workdir, {"op": "move", "path": "x/y/f.txt", "destination": "z/g.txt"})
    assert moved["path"] == "z/g.txt" and (workdir / "z/g.txt").read_bytes() == b"data"
    assert tool(workdir, {"op": "move", "path": "x/y/f.txt", "destination": "q"})[0]["error"] == "file_not_found"
    assert tool(workdir, {"op": "mkdir", "path": "z/g.txt"})[0]["error"] == "invalid_path"


def test_moves_and_new_directories_stay_inside(workdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (workdir / "out").symlink_to(outside)
    (workdir / "f").write_text("x")
    for request in ({"op": "move", "path": "f", "destination": "out/f"},
                    {"op": "move", "path": "f", "destination": "../f"},
                    {"op": "mkdir", "path": "out/new"}, {"op": "stat", "path": "out/x"}):
        assert tool(workdir, request)[0]["error"] == "invalid_path", request
    assert os.listdir(outside) == [] and (workdir / "f").exists()
