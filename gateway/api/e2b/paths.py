"""E2B's paths and users in a sandbox as ours: ``/home/user/...`` is the sandbox's working directory.

    relative("/home/user/data/a.csv")   # "data/a.csv"
    relative("data/a.csv")              # "data/a.csv" (relative to the home, as envd takes it)
    relative("/etc/passwd")             # InvalidPath: only the working directory is reachable
    absolute("data/a.csv")              # "/home/user/data/a.csv"

The SDKs name a user per request (``Authorization: Basic base64("user:")``); every command and
file operation here runs as the sandbox's one unprivileged user, so ``user`` (E2B's default)
is accepted and ``root`` refused.
"""

from __future__ import annotations

import base64
import binascii
import posixpath

from gateway.errors import Forbidden, InvalidPath

HOME = "/home/user"
#: Users a request may name: E2B's default user, and our sandbox user by its own name.
USERS = ("user", "sandbox")


def relative(path: str) -> str:
    """The path relative to the sandbox's working directory; refused if it is elsewhere."""
    if "\x00" in path:
        raise InvalidPath("the path contains a NUL byte")
    if path in ("", "~"):
        return ""
    if path.startswith("~/"):
        path = HOME + path[1:]
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join(HOME, path))
    if full == HOME:
        return ""
    if not full.startswith(HOME + "/"):
        raise InvalidPath(f"path {path!r} is outside {HOME}: on this gateway only the sandbox's working "
                          f"directory ({HOME}) is reachable")
    return full[len(HOME) + 1:]


def absolute(relative_path: str) -> str:
    return f"{HOME}/{relative_path}" if relative_path else HOME


def check_user(authorization: str) -> None:
    """Refuse a request that names a user other than the sandbox's (``root``, say)."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return
    try:
        user = base64.b64decode(credentials, validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return
    if user and user not in USERS:
        raise Forbidden(f"user {user!r} is not available here: commands and files run as the sandbox's "
                        f"unprivileged user ('user')")
