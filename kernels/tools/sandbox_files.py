"""File operations inside a sandbox, confined to its working directory (the current directory).

The gateway runs this script *inside* the sandbox (a ``docker exec`` as the sandbox's user, or a
subprocess in a local sandbox's directory) for every file request, so paths and symlinks are
resolved in the sandbox's own view of the filesystem and nothing outside it can be reached.
Standard library only; Python 3.8+. The gateway runs it as ``python3 -I -S -c <this text>``.

Protocol. stdin starts with one JSON line, the request::

    {"op": "read" | "write" | "list" | "delete" | "stat" | "mkdir" | "move" | "discard", "path": "dir/name.csv",
     "max_bytes": 104857600}

``list`` takes ``depth`` (default 1: the directory's own entries; 2 adds their children, ...);
``move`` takes ``destination`` (a path like ``path``; its parent directories are made);
``mkdir`` makes the directory and its parents and answers ``created`` (false if it was there).

``write`` takes the file's bytes from the rest of stdin in frames: a 4-byte big-endian length,
then that many bytes; a zero length ends the file. If stdin ends before that, the upload was
abandoned and nothing is written. The bytes go to a temporary file beside the target, named by
the request's ``token`` (1-32 lowercase hex digits; default: the process id), renamed over the
target at the end. ``discard`` (``path``, ``token``) removes the temporary file such a ``write``
left when it was killed before it could (answers ``discarded``: whether there was one). stdout starts with one JSON line, the
answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": CODE, "message": TEXT}`` where CODE is
``invalid_path``, ``file_not_found``, ``too_large``, ``disk_full``, ``bad_request`` or
``io_error``. ``read`` then writes exactly ``size`` bytes of content. Nothing is written to
stdout before the request line is read (the gateway relies on it).

Paths are relative, ``/``-separated, without ``..`` components or NUL bytes; after resolving
symlinks they must stay inside the working directory.
"""

import errno
import json
import os
import shutil
import stat
import struct
import sys
from datetime import datetime, timezone

import grp
import pwd

CHUNK = 1 << 16
#: Most entries one listing returns (the answer says ``truncated`` beyond it).
MAX_ENTRIES = 10000


class Refusal(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def answer(out, **fields):
    out.write(json.dumps(fields).encode() + b"\n")
    out.flush()


def iso(timestamp):
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def clean(path):
    """The request's path as a list of components; refuses what could leave the directory."""
    if not isinstance(path, str):
        raise Refusal("bad_request", "path must be a string")
    if "\x00" in path:
        raise Refusal("invalid_path", "the path contains a NUL byte")
    if path.startswith("/") or path.startswith("\\"):
        raise Refusal("invalid_path", "the path must be relative to the working directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refusal("invalid_path", "the path must not contain '..'")
    return parts


def inside(root, full):
    return full == root or full.startswith(root.rstrip(os.sep) + os.sep)


def resolve(root, parts):
    """The real path of ``parts`` under ``root`` (symlinks followed); refused if it leaves ``root``."""
    full = os.path.realpath(os.path.join(root, *parts))
    if not inside(root, full):
        raise Refusal("invalid_path", "the path leads outside the working directory (through a symlink)")
    return full


def shown(parts):
    return "/".join(parts) or "."


def entry(root, full, name, relative):
    info = os.lstat(full)
    if stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISREG(info.st_mode):
        kind = "file"
    else:
        kind = "other"
    found = {
        "name": name,
        "path": relative,
        "type": kind,
        "size": None if kind == "directory" else info.st_size,
        "modified": iso(info.st_mtime),
        "mode": stat.S_IMODE(info.st_mode),
        "permissions": stat.filemode(info.st_mode),
        "owner": name_of(pwd.getpwuid, info.st_uid),
        "group": name_of(grp.getgrgid, info.st_gid),
    }
    if kind == "symlink":
        found["symlink_target"] = os.readlink(full)
    return found


def name_of(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def op_list(root, parts, request, out):
    full = resolve(root, parts)
    if not os.path.lexists(full):
        raise Refusal("file_not_found", "no such directory: %s" % shown(parts))
    if not os.path.isdir(full):
        raise Refusal("invalid_path", "not a directory: %s" % shown(parts))
    depth = request.get("depth", 1)
    if not isinstance(depth, int) or depth < 1:
        raise Refusal("bad_request", "depth must be an integer of at least 1")
    entries = []
    truncated = walk(full, parts, depth, entries)
    entries.sort(key=lambda e: e["path"])
    answer(out, ok=True, path="/".join(parts), entries=entries, truncated=truncated)


def walk(full, parts, depth, entries):
    """The entries under ``full`` down to ``depth`` levels (symlinks are listed, never followed);
    True if ``MAX_ENTRIES`` cut the listing short."""
    with os.scandir(full) as scan:
        for item in scan:
            if len(entries) >= MAX_ENTRIES:
                return True
            relative = parts + [item.name]
            try:
                found = entry(None, item.path, item.name, "/".join(relative))
            except FileNotFoundError:
                continue  # removed while we listed
            entries.append(found)
            if depth > 1 and found["type"] == "directory":
                try:
                    if walk(item.path, relative, depth - 1, entries):
                        return True
                except (FileNotFoundError, NotADirectoryError, PermissionError):
                    continue
    return False


def op_stat(root, parts, request, out):
    parent = resolve(root, parts[:-1]) if parts else root
    target = os.path.join(parent, parts[-1]) if parts else root  # a symlink itself, never what it links to
    if not os.path.lexists(target):
        raise Refusal("file_not_found", "no such file or directory: %s" % shown(parts))
    answer(out, ok=True, **entry(root, target, parts[-1] if parts else "", "/".join(parts)))


def op_mkdir(root, parts, request, out):
    if not parts:
        raise Refusal("invalid_path", "the working directory exists already")
    parent = resolve(root, parts[:-1])
    target = os.path.join(parent, parts[-1])
    created = not os.path.lexists(target)
    if not created and not os.path.isdir(target):
        raise Refusal("invalid_path", "%s exists and is not a directory" % shown(parts))
    if created:
        os.makedirs(target)
        if not inside(root, os.path.realpath(target)):  # a parent was swapped for a symlink meanwhile
            raise Refusal("invalid_path", "the path leads outside the working directory (through a symlink)")
    answer(out, ok=True, created=created, **entry(root, target, parts[-1], "/".join(parts)))


def op_move(root, parts, request, out):
    destination = clean(request.get("destination", ""))
    if not parts or not destination:
        raise Refusal("invalid_path", "the working directory itself cannot be moved, nor replaced")
    source = os.path.join(resolve(root, parts[:-1]), parts[-1])
    if not os.path.lexists(source):
        raise Refusal("file_not_found", "no such file or directory: %s" % shown(parts))
    directory = resolve(root, destination[:-1])
    os.makedirs(directory, exist_ok=True)
    if not inside(root, os.path.realpath(directory)):
        raise Refusal("invalid_path", "the destination leads outside the working directory (through a symlink)")
    target = os.path.join(directory, destination[-1])
    os.rename(source, target)
    answer(out, ok=True, **entry(root, target, destination[-1], "/".join(destination)))


def op_read(root, parts, request, out):
    if not parts:
        raise Refusal("invalid_path", "the working directory itself is not a file")
    full = resolve(root, parts)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise Refusal("file_not_found", "no such file: %s" % shown(parts)) from None
    except IsADirectoryError:
        raise Refusal("invalid_path", "is a directory: %s (list it instead)" % shown(parts)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Refusal("invalid_path", "is a directory: %s (list it instead)" % shown(parts))
        if not stat.S_ISREG(info.st_mode):
            raise Refusal("invalid_path", "not a regular file: %s" % shown(parts))
        size = info.st_size
        limit = request.get("max_bytes")
        if isinstance(limit, int) and size > limit:
            raise Refusal("too_large",
                          "%s is %d bytes, over the limit of %d bytes" % (shown(parts), size, limit))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as source:
        answer(out, ok=True, **entry(root, full, parts[-1], "/".join(parts)))
        left = size
        try:
            while left > 0:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    break  # the file shrank while we read it: the gateway sees the content end early
                out.write(chunk)
                left -= len(chunk)
            out.flush()
        except OSError:
            sys.exit(3)  # the answer is sent: no second one, just fewer bytes than announced


def op_write(root, parts, request, out, data):
    if not parts:
        raise Refusal("invalid_path", "the working directory itself is not a file")
    full = resolve(root, parts)
    if os.path.isdir(full):
        raise Refusal("invalid_path", "is a directory: %s" % shown(parts))
    directory = os.path.dirname(full)
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:
        raise Refusal("invalid_path", "a parent of %s is not a directory" % shown(parts)) from None
    except NotADirectoryError:
        raise Refusal("invalid_path", "a parent of %s is not a directory" % shown(parts)) from None
    if not inside(root, os.path.realpath(directory)):  # a parent was swapped for a symlink meanwhile
        raise Refusal("invalid_path", "the path leads outside the working directory (through a symlink)")
    created = not os.path.lexists(full)
    limit = request.get("max_bytes")
    temporary = temporary_of(full, request.get("token", "%d" % os.getpid()))
    written = 0
    try:
        with open(temporary, "xb") as target:
            while True:
                header = data.read(4)
                if len(header) < 4:
                    raise Refusal("bad_request", "the upload was abandoned before its end")
                size = struct.unpack(">I", header)[0]
                if size == 0:
                    break
                chunk = data.read(size)
                if len(chunk) < size:
                    raise Refusal("bad_request", "the upload was abandoned before its end")
                written += size
                if isinstance(limit, int) and written > limit:
                    raise Refusal("too_large", "the upload is over the limit of %d bytes" % limit)
                target.write(chunk)
        os.replace(temporary, full)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    answer(out, ok=True, created=created, **entry(root, full, parts[-1], "/".join(parts)))


def temporary_of(full, token):
    """Where a ``write`` to ``full`` puts its bytes until they are whole."""
    if not isinstance(token, str) or not 1 <= len(token) <= 32 or token.strip("0123456789abcdef"):
        raise Refusal("bad_request", "an upload's token is 1-32 lowercase hex digits")
    return os.path.join(os.path.dirname(full), ".%s.upload-%s" % (os.path.basename(full)[:200], token))


def op_discard(root, parts, request, out):
    if not parts:
        raise Refusal("invalid_path", "the working directory itself is not a file")
    temporary = temporary_of(resolve(root, parts), request.get("token"))
    if not inside(root, os.path.realpath(os.path.dirname(temporary))):  # (a symlink to the root itself)
        raise Refusal("invalid_path", "the path leads outside the working directory (through a symlink)")
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        answer(out, ok=True, discarded=False)
        return
    answer(out, ok=True, discarded=True)


def op_delete(root, parts, request, out):
    if not parts:
        raise Refusal("invalid_path", "the working directory itself cannot be deleted")
    parent = resolve(root, parts[:-1])
    target = os.path.join(parent, parts[-1])  # the last component itself, never what it links to
    if not os.path.lexists(target):
        raise Refusal("file_not_found", "no such file: %s" % shown(parts))
    found = entry(root, target, parts[-1], "/".join(parts))
    if found["type"] == "directory":
        shutil.rmtree(target)
    else:
        os.unlink(target)
    answer(out, ok=True, **found)


def drain(data):
    """Read ``data`` to its end, discarding it.

    A refused upload: the gateway is still sending its frames. Exiting instead would leave them
    in the engine's pipe to nobody, and the gateway's writes stalling until its timeout.
    """
    while data.read(CHUNK):
        pass


def main():
    out = sys.stdout.buffer
    data = sys.stdin.buffer
    op = None
    try:
        try:
            request = json.loads(data.readline().decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise Refusal("bad_request", "the request line is not a JSON object: %s" % exc) from None
        root = os.path.realpath(os.getcwd())
        parts = clean(request.get("path", ""))
        op = request.get("op")
        if op == "list":
            op_list(root, parts, request, out)
        elif op == "read":
            op_read(root, parts, request, out)
        elif op == "write":
            op_write(root, parts, request, out, data)
        elif op == "delete":
            op_delete(root, parts, request, out)
        elif op == "stat":
            op_stat(root, parts, request, out)
        elif op == "mkdir":
            op_mkdir(root, parts, request, out)
        elif op == "move":
            op_move(root, parts, request, out)
        elif op == "discard":
            op_discard(root, parts, request, out)
        else:
            raise Refusal("bad_request", "unknown op: %r" % (op,))
    except Refusal as refusal:
        answer(out, ok=False, error=refusal.code, message=refusal.message)
        if op == "write":
            drain(data)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            code, message = "disk_full", "the sandbox's disk is full"
        elif exc.errno == errno.ENOTDIR:
            code, message = "invalid_path", "a parent of the path is not a directory"
        elif exc.errno == errno.ELOOP:
            code, message = "invalid_path", "too many levels of symlinks"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            code, message = "invalid_path", "permission denied: %s" % (exc.strerror or exc)
        elif exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            code, message = "invalid_path", "the destination exists: %s" % (exc.strerror or exc)
        elif exc.errno == errno.ENAMETOOLONG:
            code, message = "invalid_path", "the path is too long"
        else:
            code, message = "io_error", "%s" % (exc.strerror or exc)
        answer(out, ok=False, error=code, message=message)
        if op == "write":
            drain(data)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
