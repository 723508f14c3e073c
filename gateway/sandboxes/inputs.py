"""What code and environment variables may hold: checked by every way in, before anything starts or is stored.

    code = check_code(body["code"])                     # 413 past 1 MiB; 400 invalid_code: a NUL, a lone surrogate
    env = check_env(body.get("env_vars"), "env_vars")    # 400 invalid_env: a bad name, a NUL or lone surrogate

A lone surrogate (``"\\ud800"`` in JSON) is no character: no UTF-8 text, hence no kernel message,
file or environment can hold one, and the standard library's parser lets it through. A NUL ends
a C string: no environment can hold one, nor Python source. An environment variable's name is
what ``putenv`` takes: not empty, no ``=`` (it would split into another name and value). Errors
name the field and where in it the problem is; never the value of a variable (it may be a secret).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidCode, InvalidEnv, PayloadTooLarge

#: The largest code one execution takes, in bytes of UTF-8.
MAX_CODE_BYTES = 1 << 20


def check_code(code: str, field: str = "code") -> str:
    """``code``, if an execution can take it: ``PayloadTooLarge`` past ``MAX_CODE_BYTES``, ``InvalidCode``
    if it holds a lone surrogate or a NUL."""
    if len(code) > MAX_CODE_BYTES:  # (at least a byte a character: no need to encode it to know)
        raise _too_large(field)
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidCode(f"field {field!r} holds a lone surrogate ({_unit(code, exc.start)} at character "
                          f"{exc.start}): it is not text") from None
    if size > MAX_CODE_BYTES:
        raise _too_large(field)
    nul = code.find("\x00")
    if nul >= 0:
        raise InvalidCode(f"field {field!r} holds a NUL character (at character {nul}), which no source code can")
    return code


def check_env(env: Any, field: str = "env") -> dict[str, str]:
    """``env`` (None: none) as variables a process can be given: ``InvalidEnv`` if it is not an object
    of strings, a name is empty or holds ``=``, or a name or value holds a NUL or a lone surrogate."""
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(isinstance(name, str) for name in env):
        raise InvalidEnv(f"field {field!r} must be an object of strings (names to values)")
    for name, value in env.items():
        where = f"field '{field}.{_shown(name)}'"
        if not isinstance(value, str):
            raise InvalidEnv(f"{where} must be a string")
        problem = "is empty" if not name else "holds '='" if "=" in name else _text_problem(name)
        if problem:
            raise InvalidEnv(f"{where}: the variable's name {problem}")
        problem = _text_problem(value)
        if problem:
            raise InvalidEnv(f"{where}: the value {problem}")
    return env


def _text_problem(text: str) -> str | None:
    """What keeps ``text`` out of an environment (a NUL, a lone surrogate), or None."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"holds a NUL character (at character {nul})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({_unit(text, exc.start)} at character {exc.start})"
    return None


def _unit(text: str, at: int) -> str:
    return f"U+{ord(text[at]):04X}"


#: How much of a name an error shows.
_SHOWN = 40


def _shown(name: str) -> str:
    """A name as an error shows it: escaped (a NUL, a surrogate are readable), cut short if long."""
    text = ascii(name)[1:-1]
    return text[:_SHOWN] + "..." if len(text) > _SHOWN else text


def _too_large(field: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"field {field!r} is larger than {MAX_CODE_BYTES} bytes (1 MiB)")
