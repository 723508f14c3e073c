"""Environment variables for one execution only: the silent code that sets them and puts them back.

    await connection.run_silent(setting({"TOKEN": "t"}))   # before the user's code
    await connection.run_silent(restoring())               # after it: as they were before

The previous values wait in the kernel under a name starting with ``_`` (never shown, never
saved by a pause). The values are written as Python literals (``repr``), never formatted into
code some other way, so no value can become code.
"""

from __future__ import annotations

#: Where the kernel keeps the values the execution's variables replaced.
PREVIOUS = "_code_gateway_env_before"


def setting(env: dict[str, str]) -> str:
    """Python that records the current values of ``env``'s names, then sets them (no names left behind)."""
    names = sorted(env)
    return (
        f"{PREVIOUS} = (lambda os: ({{k: os.environ.get(k) for k in {names!r}}}, "
        f"os.environ.update({dict(env)!r}))[0])(__import__('os'))\n"
    )


def restoring() -> str:
    """Python that puts back what ``setting`` replaced (removing the names that were unset)."""
    return (
        "(lambda os, before: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v) "
        f"for k, v in before.items()])(__import__('os'), globals().pop({PREVIOUS!r}, {{}}))\n"
    )
