"""Environment variables for one execution only: the silent code that sets them and puts them back.

    await connection.run_silent(setting({"TOKEN": "t"}, "python"))     # before the user's code
    await connection.run_silent(restoring({"TOKEN": "t"}, "python", sandbox.env))   # after it

Python records the values it replaces (under a name starting with ``_``: never shown, never saved
by a pause) and puts exactly those back. The other languages (bash, R, JavaScript/TypeScript)
put back the sandbox's own value of each name, or unset it, as E2B's code interpreter does.
Values are written as literals of each language (JSON strings, or single-quoted shell words),
never formatted into code some other way, so no value can become code.
"""

from __future__ import annotations

import json

#: Where a Python kernel keeps the values the execution's variables replaced.
PREVIOUS = "_code_gateway_env_before"


def shell_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def setting(env: dict[str, str], language: str = "python") -> str:
    """Code that sets ``env`` (Python: after recording the current values)."""
    if language == "python":
        names = sorted(env)
        return (
            f"{PREVIOUS} = (lambda os: ({{k: os.environ.get(k) for k in {names!r}}}, "
            f"os.environ.update({dict(env)!r}))[0])(__import__('os'))\n"
        )
    return "\n".join(_assign(language, name, value) for name, value in sorted(env.items()))


def restoring(env: dict[str, str], language: str = "python", base: dict[str, str] | None = None) -> str:
    """Code that puts back what ``setting`` changed."""
    if language == "python":
        return (
            "(lambda os, before: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v) "
            f"for k, v in before.items()])(__import__('os'), globals().pop({PREVIOUS!r}, {{}}))\n"
        )
    base = base or {}
    return "\n".join(_assign(language, name, base[name]) if name in base else _unset(language, name)
                     for name in sorted(env))


def _assign(language: str, name: str, value: str) -> str:
    if language == "bash":
        return f"export {shell_word(name)}={shell_word(value)}" if name.isidentifier() else ""
    if language == "r":
        return f"do.call(Sys.setenv, setNames(list({json.dumps(value)}), {json.dumps(name)}))"
    return f"Deno.env.set({json.dumps(name)}, {json.dumps(value)});"


def _unset(language: str, name: str) -> str:
    if language == "bash":
        return f"unset {shell_word(name)}" if name.isidentifier() else ""
    if language == "r":
        return f"Sys.unsetenv({json.dumps(name)})"
    return f"Deno.env.delete({json.dumps(name)});"
