"""JSON Schemas of the request bodies: checked on every request, and published in the OpenAPI document.

Types and field names are checked here (400 naming the field); ranges are the domain's
business (``ResourcePolicy``: 422 naming the field), so the operator's limits live in one place.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

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
            "additionalProperties": {"type": "string", "pattern": "^[^\\x00]*$"},
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
        "cwd": {"type": "string", "description": "its working directory, relative to the sandbox's"},
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

create_sandbox = Draft202012Validator(CREATE_SANDBOX)
update_sandbox = Draft202012Validator(UPDATE_SANDBOX)
execute = Draft202012Validator(EXECUTE)
create_context = Draft202012Validator(CREATE_CONTEXT)
