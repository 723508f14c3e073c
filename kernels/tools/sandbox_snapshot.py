"""Saving and restoring what a paused sandbox keeps: its working directory, and its kernel's variables.

The gateway runs this script *inside* the sandbox (a ``docker exec`` as the sandbox's user, or a
subprocess in a local sandbox's directory), so everything it reads and writes is the sandbox's own
view: the gateway only ever stores and sends back the bytes, never interprets a name in them.
Standard library only; Python 3.8+. The gateway runs it as ``python3 -I -S -c <this text>``.

Protocol. stdin starts with one JSON line, the request; stdout starts with one JSON line, the
answer (``{"ok": true, ...}`` or ``{"ok": false, "error": CODE, "message": TEXT}``). Bulk data
moves in frames, both ways: a 4-byte big-endian length, then that many bytes; a zero length ends
the data. After outgoing frames comes one more JSON line, the trailer, saying how it ended.

- ``{"op": "pack"}`` — the working directory as a gzip-compressed tar, in frames on stdout;
  trailer ``{"ok": true, "files": N, "bytes": B, "skipped": [{"name", "type", "reason"}], "skipped_more": M}``
  (B: the uncompressed size of what was packed; skipped: entries that could not be read, the
  first ``MAX_SKIPPED`` of them; M: how many more).
- ``{"op": "unpack"}`` — frames of such an archive on stdin, extracted into the working
  directory; answer (after the data) ``{"ok": true, "files": N, "skipped": [...], "skipped_more": M}``.
- ``{"op": "drain"}`` — makes a FIFO and answers ``{"ok": true, "fifo": PATH}``; whatever the
  kernel writes into it comes out gzip-compressed in frames; trailer ``{"ok": true, "bytes": B}``.
- ``{"op": "fill"}`` — makes a FIFO and answers ``{"ok": true, "fifo": PATH}``; the frames on stdin,
  decompressed, are written into it for the kernel to read; trailer ``{"ok": true, "bytes": B}``.

The FIFO (in a fresh private temporary directory) moves a kernel's serialized variables without
holding them in the sandbox's memory or disk: /tmp counts against the sandbox's memory. A FIFO
nobody opens within ``OPEN_TIMEOUT`` seconds is given up.
"""

import errno
import gzip
import json
import os
import shutil
import signal
import stat
import struct
import sys
import tarfile
import tempfile

CHUNK = 1 << 16
OPEN_TIMEOUT = 120
#: Most skipped entries reported by name.
MAX_SKIPPED = 100


class Refusal(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def answer(out, **fields):
    out.write(json.dumps(fields).encode() + b"\n")
    out.flush()


class FrameWriter:
    """A write-only file whose bytes leave as frames."""

    def __init__(self, out):
        self.out = out
        self.written = 0

    def write(self, data):
        if data:
            self.out.write(struct.pack(">I", len(data)))
            self.out.write(data)
            self.written += len(data)
        return len(data)

    def flush(self):
        self.out.flush()

    def end(self):
        self.out.write(struct.pack(">I", 0))
        self.out.flush()


class FrameReader:
    """A read-only file over incoming frames; ``read`` returns b"" after the end frame."""

    def __init__(self, data):
        self.data = data
        self.pending = b""
        self.ended = False

    def _frame(self):
        header = self.data.read(4)
        if len(header) < 4:
            raise Refusal("bad_request", "the data ended before its end frame")
        size = struct.unpack(">I", header)[0]
        if size == 0:
            self.ended = True
            return b""
        chunk = self.data.read(size)
        if len(chunk) < size:
            raise Refusal("bad_request", "the data ended inside a frame")
        return chunk

    def read(self, size=-1):
        while not self.ended and (size < 0 or len(self.pending) < size):
            self.pending += self._frame()
        if size < 0:
            size = len(self.pending)
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


class Counter:
    def __init__(self):
        self.bytes = 0


class Skipped(list):
    """Entries that could not be kept: the first ``MAX_SKIPPED`` by name, the rest only counted."""

    more = 0


def skipped_entry(skipped, name, kind, reason):
    if len(skipped) < MAX_SKIPPED:
        skipped.append({"name": name, "type": kind, "reason": reason})
    else:
        skipped.more += 1


def kind_of(mode):
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def op_pack(out):
    root = os.getcwd()
    answer(out, ok=True)
    frames = FrameWriter(out)
    files = 0
    size = 0
    skipped = Skipped()
    try:
        with gzip.GzipFile(fileobj=frames, mode="wb", compresslevel=1, mtime=0) as packed:
            with tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for directory, dirs, names in os.walk(root, followlinks=False):
                    dirs.sort()
                    for name in sorted(dirs) + sorted(names):
                        full = os.path.join(directory, name)
                        relative = os.path.relpath(full, root)
                        kind = "file"
                        try:
                            info = os.lstat(full)
                            kind = kind_of(info.st_mode)
                            if kind == "other":  # sockets, FIFOs, devices: nothing to keep
                                skipped_entry(skipped, relative, kind, "not a file, directory or symlink")
                                continue
                            member = archive.gettarinfo(full, arcname=relative)
                            if kind == "file":
                                with open(full, "rb") as source:
                                    archive.addfile(member, source)
                                files += 1
                                size += member.size
                            else:
                                archive.addfile(member)
                                files += kind == "symlink"
                        except FileNotFoundError:
                            continue  # removed while we packed
                        except PermissionError as exc:
                            skipped_entry(skipped, relative, kind, exc.strerror or str(exc))
    finally:
        frames.end()  # whatever happens, the frames end before the trailer
    answer(out, ok=True, files=files, bytes=size, skipped=skipped, skipped_more=skipped.more)


def clean_name(name):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        return None
    return os.path.join(*parts)


def op_unpack(data, out):
    root = os.getcwd()
    files = 0
    skipped = Skipped()
    directories = []
    with gzip.GzipFile(fileobj=FrameReader(data), mode="rb") as packed:
        with tarfile.open(fileobj=packed, mode="r|") as archive:
            for member in archive:
                relative = clean_name(member.name)
                if relative is None:
                    skipped_entry(skipped, member.name, "other", "not a relative path")
                    continue
                target = os.path.join(root, relative)
                parent = os.path.dirname(target)
                if os.path.realpath(parent) != os.path.normpath(parent):
                    skipped_entry(skipped, relative, "other", "its directory is a symlink")
                    continue
                try:
                    if member.isdir():
                        os.makedirs(target, mode=0o700, exist_ok=True)
                        directories.append((target, member))
                    elif member.issym():
                        os.symlink(member.linkname, target)
                        files += 1
                    elif member.isfile():
                        with archive.extractfile(member) as source, open(target, "xb") as sink:
                            shutil.copyfileobj(source, sink, CHUNK)
                        os.chmod(target, member.mode & 0o777)
                        os.utime(target, (member.mtime, member.mtime))
                        files += 1
                    else:
                        skipped_entry(skipped, relative, "other", "not a file, directory or symlink")
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    skipped_entry(skipped, relative, "file", exc.strerror or str(exc))
    for target, member in reversed(directories):  # last: a read-only directory was filled first
        try:
            os.chmod(target, member.mode & 0o777)
            os.utime(target, (member.mtime, member.mtime))
        except OSError:
            pass
    answer(out, ok=True, files=files, skipped=skipped, skipped_more=skipped.more)


def make_fifo():
    directory = tempfile.mkdtemp(prefix=".code-gateway-")
    path = os.path.join(directory, "state")
    os.mkfifo(path, 0o600)
    return directory, path


def open_within(path, flags):
    """Open the FIFO, waiting at most OPEN_TIMEOUT seconds for the other side."""

    def give_up(signum, frame):
        raise Refusal("timeout", "nobody opened the FIFO within %d s" % OPEN_TIMEOUT)

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(OPEN_TIMEOUT)
    try:
        return os.open(path, flags)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def op_drain(out):
    directory, path = make_fifo()
    try:
        answer(out, ok=True, fifo=path)
        frames = FrameWriter(out)
        size = 0
        try:
            fd = open_within(path, os.O_RDONLY)
            with os.fdopen(fd, "rb") as source:
                with gzip.GzipFile(fileobj=frames, mode="wb", compresslevel=1, mtime=0) as packed:
                    while True:
                        chunk = source.read(CHUNK)
                        if not chunk:
                            break
                        packed.write(chunk)
                        size += len(chunk)
        finally:
            frames.end()
        answer(out, ok=True, bytes=size)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def op_fill(data, out):
    directory, path = make_fifo()
    try:
        answer(out, ok=True, fifo=path)
        fd = open_within(path, os.O_WRONLY)
        size = 0
        with os.fdopen(fd, "wb") as sink:
            with gzip.GzipFile(fileobj=FrameReader(data), mode="rb") as packed:
                while True:
                    chunk = packed.read(CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    size += len(chunk)
        answer(out, ok=True, bytes=size)
    except BrokenPipeError:
        raise Refusal("io_error", "the kernel stopped reading its variables") from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main():
    out = sys.stdout.buffer
    data = sys.stdin.buffer
    try:
        try:
            request = json.loads(data.readline().decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise Refusal("bad_request", "the request line is not a JSON object: %s" % exc) from None
        op = request.get("op")
        if op == "pack":
            op_pack(out)
        elif op == "unpack":
            op_unpack(data, out)
        elif op == "drain":
            op_drain(out)
        elif op == "fill":
            op_fill(data, out)
        else:
            raise Refusal("bad_request", "unknown op: %r" % (op,))
    except Refusal as refusal:
        answer(out, ok=False, error=refusal.code, message=refusal.message)
        return 2
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        answer(out, ok=False, error="disk_full" if full else "io_error",
               message="the sandbox's disk is full" if full else "%s" % (getattr(exc, "strerror", None) or exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
