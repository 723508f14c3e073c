"""kernels/tools/sandbox_snapshot.py on its own: pack and unpack a directory, move bytes through its FIFO."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

TOOL = Path(__file__).resolve().parents[2] / "kernels" / "tools" / "sandbox_snapshot.py"


def frames(data: bytes, size: int = 1000) -> bytes:
    return b"".join(struct.pack(">I", len(data[i:i + size])) + data[i:i + size]
                    for i in range(0, len(data), size)) + struct.pack(">I", 0)


def unframe(stream: bytes) -> tuple[bytes, bytes]:
    """The payload of the frames at the start of ``stream``, and what follows the end frame."""
    payload = bytearray()
    while True:
        size = struct.unpack(">I", stream[:4])[0]
        stream = stream[4:]
        if not size:
            return bytes(payload), stream
        payload += stream[:size]
        stream = stream[size:]


def start(workdir: Path, op: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-I", str(TOOL)], cwd=workdir, env={"PATH": os.environ["PATH"]},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(json.dumps({"op": op}).encode() + b"\n")
    process.stdin.flush()
    return process


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def pack(workdir: Path) -> tuple[bytes, dict[str, Any]]:
    out, _ = start(workdir, "pack").communicate(timeout=30)
    first, _, rest = out.partition(b"\n")
    assert json.loads(first) == {"ok": True}
    archive, trailer = unframe(rest)
    return archive, json.loads(trailer)


def test_pack_then_unpack_gives_back_the_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "data" / "deep").mkdir(parents=True)
    (source / "data" / "deep" / "a.csv").write_bytes(b"a,b\n1,2\n")
    (source / "run.sh").write_text("echo hi\n")
    (source / "run.sh").chmod(0o750)
    os.symlink("/etc/passwd", source / "passwd")
    os.mkfifo(source / "pipe")
    (source / "sealed").mkdir()
    (source / "sealed" / "inside.txt").write_text("kept")
    (source / "sealed").chmod(0o500)
    try:
        archive, trailer = pack(source)
    finally:
        (source / "sealed").chmod(0o700)
    assert trailer["ok"] and trailer["files"] == 4  # a.csv, run.sh, the link, inside.txt
    assert trailer["skipped"] == [{"name": "pipe", "type": "other", "reason": "not a file, directory or symlink"}]

    target = tmp_path / "target"
    target.mkdir()
    out, _ = start(target, "unpack").communicate(frames(archive), timeout=30)
    assert lines(out) == [{"ok": True, "files": 4, "skipped": [], "skipped_more": 0}]
    assert (target / "data" / "deep" / "a.csv").read_bytes() == b"a,b\n1,2\n"
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o750
    assert os.readlink(target / "passwd") == "/etc/passwd"  # a link again, never its target's bytes
    assert (target / "sealed" / "inside.txt").read_text() == "kept"
    assert (target / "sealed").stat().st_mode & 0o777 == 0o500
    (target / "sealed").chmod(0o700)


def test_past_its_first_hundred_skipped_entries_are_only_counted(tmp_path: Path) -> None:
    for n in range(150):
        os.mkfifo(tmp_path / f"pipe-{n:03}")
    _, trailer = pack(tmp_path)
    assert len(trailer["skipped"]) == 100 and trailer["skipped_more"] == 50


def test_unpack_refuses_names_leaving_the_directory(tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as packed, tarfile.open(fileobj=packed, mode="w|") as archive:
        for name in ("../escaped", "/abs", "fine"):
            member = tarfile.TarInfo(name)
            member.size = 2
            archive.addfile(member, io.BytesIO(b"hi"))
    target = tmp_path / "target"
    target.mkdir()
    out, _ = start(target, "unpack").communicate(frames(buffer.getvalue()), timeout=30)
    answer = lines(out)[0]
    assert answer["files"] == 1 and {s["name"] for s in answer["skipped"]} == {"../escaped", "/abs"}
    assert sorted(os.listdir(target)) == ["fine"] and not (tmp_path / "escaped").exists()


def test_drain_and_fill_carry_bytes_through_a_fifo(tmp_path: Path) -> None:
    blob = os.urandom(300_000)
    with start(tmp_path, "drain") as drain:  # (the with block closes its pipes and reaps it)
        assert drain.stdout is not None and drain.stdin is not None
        drain.stdin.close()
        fifo = json.loads(drain.stdout.readline())["fifo"]
        writer = threading.Thread(target=lambda: Path(fifo).write_bytes(blob))  # the kernel's side
        writer.start()
        rest = drain.stdout.read()
        writer.join()
        assert drain.wait(30) == 0
    compressed, trailer = unframe(rest)
    assert json.loads(trailer) == {"ok": True, "bytes": len(blob)}
    assert not os.path.exists(fifo)

    with start(tmp_path, "fill") as fill:
        assert fill.stdout is not None and fill.stdin is not None
        fifo = json.loads(fill.stdout.readline())["fifo"]
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(Path(fifo).read_bytes()))
        reader.start()
        fill.stdin.write(frames(compressed))
        fill.stdin.close()
        assert lines(fill.stdout.read()) == [{"ok": True, "bytes": len(blob)}]
        reader.join()
    assert received == [blob]
