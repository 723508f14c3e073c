"""JSON Schemas of the request bodies: checked on every request, and published in the OpenAPI document.

Types and field names are checked here (400 naming the field); ranges are the domain's
business (``ResourcePolicy``: 422 naming the field), so the operator's limits live in one place.

Each schema is checked by a ``BodyValidator``: a body of plainly typed fields, as nearly every
execute request is (``{"code": "1+1"}``), is accepted by a quick check of its own; anything the
quick check cannot vouch for goes through jsonschema, which also words the error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.provisioners.isolation import ISOLATIONS
from gateway.sandboxes.contexts import ALIASES, LANGUAGES
from gateway.sandboxes.model import FIGURE_FORMATS, ON_IDLE

NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}

RESOURCES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cpu": {**NUMBER, "description": "CPU cores, 0 < cpu <= 16"},
        "memory_mb": {**INTEGER, "description": "memory in MiB, 0 < memory_mb <= 32768"},
        "disk_mb": {**INTEGER, "description": "size of the working directory and /tmp in MiB"},
        "pids": {**INTEGER, "description": "most processes and threads"},
        "network": {"type": "boolean", "description": "network access (only where the operator allows it)"},
        "timeout": {**NUMBER, "description": "default per-execution timeout in seconds"},
    },
}

#: Text without a NUL character (what no environment value or file name can hold).
NO_NUL: dict[str, Any] = {"type": "string", "pattern": "^[^\\x00]*$"}

#: How long a sandbox lives and what idleness does to it (ranges: ``LifetimePolicy``, 422 naming the field).
LIFETIME: dict[str, Any] = {
    "lifetime": {**NUMBER, "description": "seconds until the sandbox expires and is terminated (default 3600)"},
    "idle_timeout": {**NUMBER, "description": "seconds without activity before on_idle applies (default 600)"},
    "on_idle": {"enum": list(ON_IDLE), "description": "what an idle sandbox becomes: pause (default) or terminate"},
    "auto_resume": {"type": "boolean",
                    "description": "work on a paused sandbox resumes it (default); false: 409 sandbox_paused"},
}

CREATE_SANDBOX: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **LIFETIME,
        "resources": RESOURCES,
        "timeout": {**NUMBER, "description": "default per-execution timeout in seconds"},
        "network": {"type": "boolean", "description": "network access (only where the operator allows it)"},
        "isolation": {"enum": list(ISOLATIONS),
                      "description": "the container runtime: runc or gvisor (a kernel of its own between the sandbox "
                                     "and the host's), where the operator allows it; default: the operator's"},
        "env": {
            "type": "object",
            # (no NUL in a value: an environment cannot hold one, the engine would refuse it)
            "additionalProperties": NO_NUL,
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "description": "environment variables visible to the code as os.environ",
        },
        "metadata": {"type": "object", "description": "free-form, returned as given"},
        "figure_formats": {
            "type": "array",
            "items": {"enum": list(FIGURE_FORMATS)},
            "minItems": 1,
            "uniqueItems": True,
            "description": "MIME types of inline plots: png (default), retina, jpeg, svg, pdf",
        },
        "notebook": {
            "type": "object",
            "description": "an nbformat v4 notebook whose code cells run in order once the sandbox is up",
        },
    },
}

#: The languages of contexts, with the other names E2B accepts for them.
LANGUAGE_NAMES = [*LANGUAGES, *ALIASES]

EXECUTE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["code"],
    "properties": {
        "code": {"type": "string", "description": "Python source, at most 1 MiB"},
        "timeout": {**NUMBER, "description": "seconds before the execution is interrupted"},
        "interrupt_on_disconnect": {
            "type": "boolean",
            "description": "streaming only: interrupt the execution when the client goes away",
        },
        "context": {"type": "string", "description": "the id of the context (kernel) to run in; "
                                                     "default: the sandbox's own, python"},
        "language": {"enum": LANGUAGE_NAMES, "description": "run in the sandbox's context of this language, "
                                                            "started if need be (not with 'context')"},
    },
    "not": {"required": ["context", "language"]},
}

CREATE_CONTEXT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "language": {"enum": LANGUAGE_NAMES, "description": "python (default), bash, r, javascript or typescript"},
        "cwd": {**NO_NUL, "description": "its working directory, relative to the sandbox's"},
    },
}

UPDATE_SANDBOX: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **LIFETIME,
        "lifetime": {**NUMBER, "description": "seconds from now until the sandbox expires (a new expires_at)"},
        "metadata": {"type": "object", "description": "replaces the sandbox's metadata"},
    },
}

#: A value's check per JSON Schema ``type``, as strict as jsonschema's or stricter (``integer`` takes
#: no ``1.0`` here: jsonschema would, so such a body just takes the full check).
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: type(value) is str,
    "boolean": lambda value: type(value) is bool,
    "integer": lambda value: type(value) is int,
    "number": lambda value: type(value) is int or type(value) is float,
}
#: Keywords of a field's schema that say nothing about its value.
_ANNOTATIONS = frozenset({"description", "title"})


def _field_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A quick check of one field (None: its schema is not one we check quickly)."""
    keywords = set(schema) - _ANNOTATIONS
    if keywords == {"type"}:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not all(isinstance(t, str) and t in _TYPES for t in types):
            return None
        checks = [_TYPES[t] for t in types]
        return lambda value: any(check(value) for check in checks)
    if keywords == {"type", "pattern"} and schema["type"] == "string" and schema["pattern"] == NO_NUL["pattern"]:
        return lambda value: type(value) is str and "\x00" not in value
    if keywords == {"enum"} and all(type(v) is str for v in schema["enum"]):
        allowed = frozenset(schema["enum"])
        return lambda value: type(value) is str and value in allowed
    if keywords == {"const"} and type(schema["const"]) is str:
        const = schema["const"]
        return lambda value: type(value) is str and value == const
    return None


def quick_check(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """A check that is True only for bodies ``schema`` accepts, for the schemas of flat objects (no
    unknown fields, fields of plain types, enums or constants, ``required``, ``not: {required}``);
    None for any other schema. False proves nothing: the full validator decides then."""
    if set(schema) - _ANNOTATIONS - {"type", "additionalProperties", "properties", "required", "not"}:
        return None
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        return None
    fields = {name: _field_check(field) for name, field in schema.get("properties", {}).items()}
    if any(check is None for check in fields.values()):
        return None
    required = tuple(schema.get("required", ()))
    exclusive: tuple[str, ...] = ()
    if "not" in schema:
        if set(schema["not"]) != {"required"}:
            return None
        exclusive = tuple(schema["not"]["required"])
    checks: dict[str, Callable[[Any], bool]] = {name: check for name, check in fields.items() if check is not None}

    def accepts(body: dict[str, Any]) -> bool:
        for name, value in body.items():
            check = checks.get(name)
            if check is None or not check(value):
                return False
        return all(name in body for name in required) and not (exclusive and all(name in body for name in exclusive))

    return accepts


class BodyValidator:
    """jsonschema's Draft 2020-12 validator of ``schema``, behind a quick check (``quick_check``) of
    ``quick`` (default: ``schema`` itself) that accepts the common bodies without it."""

    def __init__(self, schema: dict[str, Any], quick: dict[str, Any] | None = None) -> None:
        self.schema = schema
        self.full = Draft202012Validator(schema)
        self.accepts = quick_check(quick if quick is not None else schema) or (lambda body: False)

    def iter_errors(self, body: Any) -> Iterator[ValidationError]:
        """Every way ``body`` breaks the schema (none for a body the quick check accepts)."""
        if isinstance(body, dict) and self.accepts(body):
            return iter(())
        return self.full.iter_errors(body)


create_sandbox = BodyValidator(CREATE_SANDBOX)
update_sandbox = BodyValidator(UPDATE_SANDBOX)
execute = BodyValidator(EXECUTE)
create_context = BodyValidator(CREATE_CONTEXT)
