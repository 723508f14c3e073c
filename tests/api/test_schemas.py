"""Request body validators: the quick check accepts only what jsonschema accepts, and errors are jsonschema's."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from gateway.api import schemas
from gateway.api.jupyter import START_KERNEL
from gateway.api.sockets import SOCKET_MESSAGE

VALIDATORS = {"execute": schemas.execute, "create_sandbox": schemas.create_sandbox,
              "update_sandbox": schemas.update_sandbox, "create_context": schemas.create_context,
              "start_kernel": START_KERNEL, "socket_message": SOCKET_MESSAGE}
#: Values of every JSON type, and the strings the schemas' enums and constants name.
VALUES: list[Any] = ["1+1", "", "python", "r", "execute", "interrupt", "pause", 0, 7, -1, 1.0, 2.5, True, False,
                     None, [], ["png"], {}, {"a": "b"}, "a\x00b"]
FIELDS = ["code", "timeout", "interrupt_on_disconnect", "context", "language", "type", "id", "cwd", "name",
          "lifetime", "on_idle", "metadata", "unknown"]


def bodies(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{field: rng.choice(VALUES) for field in rng.sample(FIELDS, rng.randint(0, 5))} for _ in range(count)]


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_the_quick_check_accepts_nothing_the_schema_refuses(name: str) -> None:
    validator = VALIDATORS[name]
    accepted = [body for body in bodies(20000, seed=15) if validator.accepts(body)]
    assert all(not list(validator.full.iter_errors(body)) for body in accepted)
    assert all(not list(validator.iter_errors(body)) for body in accepted)


def test_the_common_bodies_take_the_quick_check() -> None:
    assert schemas.execute.accepts({"code": "1+1"})
    assert schemas.execute.accepts({"code": "x", "timeout": 5, "interrupt_on_disconnect": True, "language": "r"})
    assert schemas.create_context.accepts({"language": "python", "cwd": "work"})
    assert SOCKET_MESSAGE.accepts({"type": "execute", "id": "c1", "code": "1+1", "timeout": 2.5})
    assert SOCKET_MESSAGE.accepts({"type": "execute", "id": 3, "code": "1+1"})


@pytest.mark.parametrize("body", [
    {"code": 1}, {}, {"code": "x", "extra": 1}, {"code": "x", "timeout": "5"}, {"code": "x", "timeout": True},
    {"code": "x", "context": "c", "language": "python"}, {"code": "x", "language": "cobol"},
    {"code": "x", "timeout": 1.0, "interrupt_on_disconnect": 1},
])
def test_a_bad_body_gets_jsonschemas_errors(body: dict[str, Any]) -> None:
    assert not schemas.execute.accepts(body)
    assert [e.message for e in schemas.execute.iter_errors(body)] == \
        [e.message for e in schemas.execute.full.iter_errors(body)]
    assert list(schemas.execute.iter_errors(body))


@pytest.mark.parametrize("message", [
    {"id": "c1", "code": "1+1"}, {"type": "execute", "id": True, "code": "x"}, {"type": "execute", "id": 1.5, "code": "x"},
    {"type": "execute", "id": "c1"}, {"type": "interrupt", "code": "x"},
])
def test_a_socket_message_the_schema_refuses_is_not_taken_quickly(message: dict[str, Any]) -> None:
    assert not SOCKET_MESSAGE.accepts(message)
    assert list(SOCKET_MESSAGE.iter_errors(message))


def test_schemas_the_quick_check_cannot_vouch_for_get_none() -> None:
    for schema in ({"type": "object", "properties": {"a": {"type": "string"}}},  # unknown fields allowed
                   {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "object"}}},
                   {"type": "object", "additionalProperties": False, "properties": {"a": {"minimum": 1}}},
                   {"type": "object", "additionalProperties": False, "anyOf": []}):
        assert schemas.quick_check(schema) is None
    # Every combination of fields of a flat schema is judged as jsonschema judges it, or left to it.
    flat = {"type": "object", "additionalProperties": False, "required": ["a"], "not": {"required": ["b", "c"]},
            "properties": {"a": {"type": ["string", "integer"]}, "b": {"enum": ["x"]}, "c": {"const": "y"}}}
    validator = schemas.BodyValidator(flat)
    for values in itertools.product(["s", 1, True, "x", "y", None], repeat=3):
        for present in itertools.product([False, True], repeat=3):
            body = {k: v for k, v, here in zip("abc", values, present) if here}
            if validator.accepts(body):
                assert not list(validator.full.iter_errors(body))
