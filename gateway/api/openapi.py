"""The OpenAPI 3.1 document of the gateway's HTTP API, served at ``/api/v1/openapi.json``.

It says what the gateway does, so that a client (or a fuzzer) holding to it is never refused:

- request bodies are the very schemas the handlers validate with (``gateway.api.schemas``), with
  the ranges this gateway's policies allow (``ResourcePolicy``, ``LifetimePolicy``: its own
  configured minima and maxima) written into them, and ``network`` only ``false`` where the
  operator allows no network; a seed ``notebook`` is held to nbformat's own schema of the v4 minor
  version it says it is;
- every status a route answers is listed (409 for files of a sandbox not running, 429, 503, ...);
- the Jupyter Server kernel API (``/api/kernels``, ``/api/kernelspecs``) is described too.

    document(policy=manager.policy, lifetimes=manager.lifetimes, kernel_names=["bash", "python3"])

A test checks every route is described, with exactly the methods its handler answers.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from gateway import __version__
from gateway.api import schemas
from gateway.api.base import DEFAULT_PAGE, MAX_OFFSET, MAX_PAGE, APIHandler
from gateway.api.jupyter import START_KERNEL_SCHEMA, startable_kernels
from gateway.api.sandboxes import STATUSES
from gateway.events.model import TYPES as EVENT_TYPES
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.contexts import KERNELSPEC_LANGUAGES
from gateway.sandboxes.lifetimes import LifetimePolicy
from gateway.sandboxes.limits import ResourcePolicy
from gateway.sandboxes.manager import SandboxManager

JSON = "application/json"
STREAMS = ("application/x-ndjson", "text/event-stream")


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def body(schema: dict[str, Any], media_type: str = JSON, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {media_type: {"schema": schema}}}


def reply(description: str, schema: dict[str, Any] | None = None, media_type: str = JSON) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {media_type: {"schema": schema}}
    return answer


def error(description: str) -> dict[str, Any]:
    return reply(description, ref("Error"))


ERRORS = {
    "400": error("malformed JSON (or nested more than 128 levels deep), an unknown field or a wrong type (the "
                 "message names the field); code or environment variables no kernel can take (invalid_code, "
                 "invalid_env)"),
    "401": error("no API key, or an unknown one"),
    "404": error("no such sandbox or execution (also someone else's, or one that ended longer ago than "
                  "--history-retention)"),
}
#: While the store cannot commit, changes are refused rather than acknowledged.
STORE_UNAVAILABLE = {"503": error("the store cannot commit writes right now (store_unavailable)")}
#: What a request choosing its answer's media type by ``Accept`` may answer (``streams.negotiate``).
NOT_ACCEPTABLE = {"406": error("the Accept header accepts none of the media types offered, by q-values "
                               "(not_acceptable)")}
NOT_RUNNING = {"409": error("the sandbox is not running (sandbox_not_running, sandbox_paused, sandbox_busy)")}
#: What a request that resumes a paused sandbox (auto_resume) may answer.
RESUME_OVER_QUOTA = {"429": error("resuming the paused sandbox would exceed a quota (quota_exceeded); Retry-After")}
#: What any file operation may also answer: its tool runs inside the sandbox (see gateway.sandboxes.files).
FILE_ERRORS = {
    "409": error("the sandbox is not running, or stopped or was restarted during the operation "
                 "(sandbox_not_running, sandbox_paused, sandbox_busy)"),
    "429": error("too many file operations already run in the sandbox (too_many_operations), or resuming the "
                 "paused sandbox would exceed a quota (quota_exceeded); Retry-After"),
    "502": error("the sandbox's file tool died or answered nonsense (file_operation_failed)"),
    "503": error("the container engine failed (engine_unavailable)"),
    "504": error("the sandbox's file tool stayed silent too long and was killed (file_operation_timeout)"),
}
#: What the router takes as an id (anything else is a 404: no such route).
ID = {"type": "string", "pattern": "^[0-9a-fA-F-]{1,64}$"}
SANDBOX_ID = {"name": "sandbox_id", "in": "path", "required": True, "schema": ID}
EXECUTION_ID = {"name": "execution_id", "in": "path", "required": True, "schema": ID}
KERNEL_ID = {"name": "kernel_id", "in": "path", "required": True, "schema": ID}
FILE_PATH = {"name": "path", "in": "path", "required": True, "schema": {**schemas.NO_NUL, "minLength": 1},
             "description": "relative to the sandbox's working directory"}
DIRECTORY_PATH = {"name": "path", "in": "query", "schema": schemas.NO_NUL,
                  "description": "a directory relative to the sandbox's working directory (default: that one), "
                                 "taken as sent (spaces kept)"}
#: What a file route answers for a path it cannot take (``path_argument``, ``check_path``).
PATH_ERRORS = {"400": error("a path that is not UTF-8, holds a NUL, or leads out of the working directory "
                            "(invalid_path, the message says which), or malformed input")}
#: ``limit`` and ``offset`` of a paged listing (``APIHandler.paging``).
PAGING = [
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
]
WEBSOCKET = {"101": reply("switching to the WebSocket protocol"),
             "400": error("not a WebSocket upgrade (a JSON error, as for any route)"), "401": ERRORS["401"],
             "403": error("a browser origin that is not allowed (origin_not_allowed)"), "404": ERRORS["404"]}

SANDBOX = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "owner": {"type": "string"},
        "status": {"enum": STATUSES},
        "status_reason": {"type": ["string", "null"]}, "provisioner": {"type": "string"},
        "image": {"type": ["string", "null"]}, "resources": schemas.RESOURCES, "env": {"type": "object"},
        "isolation": {"enum": ["runc", "gvisor", None],
                      "description": "the container runtime it runs under (null: a local process, no isolation)"},
        "metadata": {"type": "object"}, "figure_formats": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "last_active_at": {"type": "string", "format": "date-time"},
        "terminated_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "idle_timeout": {"type": "number"}, "on_idle": {"enum": ["pause", "terminate"]},
        "auto_resume": {"type": "boolean"},
        "execution_count": {"type": "integer"},
        "snapshot": {"type": ["object", "null"], "description": "while paused: what was saved (files, bytes, "
                     "variables, modules, lost, execution_count, at; at most 64 KiB: truncated and omitted say what "
                     "was left out)"},
        "restore": {"type": ["object", "null"], "description": "after a resume: files, variables, lost, at (at most "
                    "64 KiB: truncated and omitted say what was left out)"},
        "template": {"type": ["string", "null"], "description": "the E2B template it was created from, if any"},
        "seed": {"type": "object", "description": "only in a create's answer: how the seed notebook ran"},
    },
}
EXECUTION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "sandbox_id": {"type": "string"}, "code": {"type": "string"},
        "status": {"enum": ["queued", "running", "completed", "failed", "timed_out", "cancelled"]},
        "outputs": {"type": "array", "items": {"type": "object"}, "description": "nbformat v4 output objects"},
        "stdout": {"type": "string"}, "stderr": {"type": "string"},
        "result": {"type": ["object", "null"], "description": "the execute_result's MIME bundle"},
        "error": {"type": ["object", "null"], "properties": {
            "code": {"type": "string"}, "ename": {"type": "string"}, "evalue": {"type": "string"},
            "traceback": {"type": "array", "items": {"type": "string"}}}},
        "execution_count": {"type": ["integer", "null"]}, "truncated": {"type": "boolean"},
        "context": {"type": ["string", "null"], "description": "the context it ran in (null: the default)"},
        "timeout": {"type": "number"}, "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
        "duration_ms": {"type": ["number", "null"]},
    },
}
CONTEXT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "sandbox_id": {"type": "string"},
        "language": {"enum": ["python", "bash", "r", "javascript", "typescript"]},
        "cwd": {"type": "string", "description": "relative to the sandbox's working directory"},
        "status": {"enum": STATUSES, "description": "the default context's is its sandbox's (paused with it, "
                                                   "say); another's is running or failed"},
        "status_reason": {"type": ["string", "null"]},
        "default": {"type": "boolean", "description": "the sandbox's own kernel"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}
CONTEXT_ID = {"name": "context_id", "in": "path", "required": True, "schema": {"type": "string"}}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                            "retry_after": {"type": "integer"}}}},
}
KERNEL = {
    "type": "object",
    "required": ["id", "name", "last_activity", "execution_state", "connections"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                   "last_activity": {"type": "string", "format": "date-time"},
                   "execution_state": {"type": "string"}, "connections": {"type": "integer"}},
}


#: The minor versions of nbformat 4 with a schema of their own; nbformat holds a later minor to the last.
NBFORMAT_MINORS = range(6)


def nbformat_schema(minor: int, component: str) -> dict[str, Any]:
    """nbformat's own JSON schema of a v4.``minor`` notebook, published as ``component``: its
    references point into this document, and a code cell's source holds no NUL."""
    text = resources.files("nbformat.v4").joinpath(f"nbformat.v4.{minor}.schema.json").read_text()
    into = f'"#/components/schemas/{component}/definitions/'
    schema: dict[str, Any] = json.loads(text.replace('"#/definitions/', into))
    schema.pop("$schema", None)
    # A code cell's source is an execution's code: no NUL (gateway/sandboxes/inputs.py refuses it).
    code_cell = schema["definitions"]["code_cell"]["properties"]
    code_cell["source"] = {"description": "Contents of the cell, represented as an array of lines; no NUL.",
                        "oneOf": [schemas.NO_NUL, {"type": "array", "items": schemas.NO_NUL}]}
    return schema


@functools.cache
def history_schema() -> dict[str, Any]:
    """``Notebook``: a sandbox's history as the gateway exports it, a v4.5 notebook."""
    return nbformat_schema(NBFORMAT_MINORS[-1], "Notebook")


def seed_component(minor: int) -> str:
    return f"SeedNotebook4_{minor}"


@functools.cache
def seed_schemas() -> dict[str, dict[str, Any]]:
    """The components of a seed notebook: ``SeedNotebook``, any of one per minor version.

    The gateway holds a seed to the schema of the minor version it says it is (as
    ``nbformat.validate`` does), so each branch is that version's schema with ``nbformat_minor``
    pinned to it; the last takes every later minor too. Its cells may leave out their ``id``: the
    gateway gives one to a cell without (as nbformat does on reading such a notebook).
    """
    components: dict[str, dict[str, Any]] = {}
    for minor in NBFORMAT_MINORS:
        schema = nbformat_schema(minor, seed_component(minor))
        if minor < NBFORMAT_MINORS[-1]:
            schema["properties"]["nbformat_minor"] = {"type": "integer", "const": minor}
        for definition in schema["definitions"].values():
            if "id" in definition.get("required", []):
                definition["required"].remove("id")
        components[seed_component(minor)] = schema
    return {"SeedNotebook": {"description": "an nbformat v4 notebook (any minor version), held to the schema "
                                            "of the version it says it is; a cell's id may be left out",
                             "anyOf": [ref(name) for name in components]},
            **components}


def ranged(schema: dict[str, Any], bounds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of an object schema with each named property's schema extended by its bounds."""
    published = copy.deepcopy(schema)
    for name, extra in bounds.items():
        published["properties"][name] = {**published["properties"][name], **extra}
    return published


#: What an execution's code may not hold, published (the handlers refuse it with 400 ``invalid_code``,
#: a message of their own, so it is not in the validated schema).
NO_NUL_CODE = {"pattern": schemas.NO_NUL["pattern"]}


class Requests:
    """The request schemas as this gateway's policies make them."""

    def __init__(self, policy: ResourcePolicy, lifetimes: LifetimePolicy, kernel_names: list[str],
                 isolations: list[str] | None = None) -> None:
        def limit(field: str) -> dict[str, Any]:
            return {"minimum": policy.minimum(field), "maximum": policy.maximum(field)}

        seconds = {"exclusiveMinimum": 0, "maximum": lifetimes.max_lifetime}
        network = {} if policy.allow_network else {"const": False}
        resources = ranged(schemas.RESOURCES, {
            **{field: limit(field) for field in ("cpu", "memory_mb", "disk_mb", "pids", "timeout")},
            "network": network,
        })
        # Only the isolations a request may name and this gateway can run (none for local processes).
        offered: dict[str, Any] = {"enum": isolations} if isolations else {"not": {}}
        self.create_sandbox = ranged(schemas.CREATE_SANDBOX, {
            "resources": resources, "timeout": limit("timeout"), "network": network, "isolation": offered,
            "lifetime": seconds, "idle_timeout": seconds, "notebook": ref("SeedNotebook"),
        })
        # The top-level timeout and network are shorthands: not both with their resources twin.
        self.create_sandbox["dependentSchemas"] = {
            field: {"properties": {"resources": {"not": {"required": [field]}}}} for field in ("timeout", "network")
        }
        self.update_sandbox = ranged(schemas.UPDATE_SANDBOX, {"lifetime": seconds, "idle_timeout": seconds})
        self.execute = ranged(schemas.EXECUTE, {"timeout": limit("timeout"), "code": NO_NUL_CODE})
        self.start_kernel = ranged(START_KERNEL_SCHEMA, {"name": {"enum": kernel_names}})


def sandbox_action(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": [SANDBOX_ID], "responses": {
        **ok, **ERRORS, "409": error("the sandbox is not running, or another lifecycle operation of it is under way"),
        **RESUME_OVER_QUOTA, **STORE_UNAVAILABLE}}}


def v1_paths(requests: Requests) -> dict[str, Any]:
    return {
        "/api/v1/sandboxes": {
            "post": {"summary": "Create a sandbox", "requestBody": body(requests.create_sandbox, required=False),
                     "responses": {"201": reply("the running sandbox", ref("Sandbox")), **ERRORS,
                                   "403": error("network access, or the isolation asked for, is not allowed here "
                                                "(network_not_allowed, isolation_not_allowed)"),
                                   "413": error("a seed notebook cell over 1 MiB"),
                                   "422": error("a limit out of range (the message names the field), or an "
                                                "isolation this gateway cannot run (isolation_unavailable)"),
                                   "429": error("over a quota (live sandboxes, CPU, memory); Retry-After says when "
                                                "to try again"),
                                   "503": error("the sandbox could not be started, or the store cannot commit "
                                                "writes (sandbox_start_failed, store_unavailable)")}},
            "get": {"summary": "List your sandboxes, oldest first, a page at a time",
                    "parameters": [{"name": "status", "in": "query", "style": "form", "explode": True,
                                    "description": "only sandboxes in one of these statuses (repeat it for several)",
                                    "schema": {"type": "array", "items": {"enum": STATUSES}}}, *PAGING],
                    "responses": {"200": reply("a page of sandboxes", {
                        "type": "object", "required": ["sandboxes", "total", "limit", "offset"], "properties": {
                            "sandboxes": {"type": "array", "items": ref("Sandbox")},
                            "total": {"type": "integer", "description": "how many match, on every page"},
                            "limit": {"type": "integer"}, "offset": {"type": "integer"}}}), **ERRORS}},
        },
        "/api/v1/sandboxes/{sandbox_id}": {
            "get": {"summary": "Show a sandbox", "parameters": [SANDBOX_ID],
                    "responses": {"200": reply("the sandbox", ref("Sandbox")), **ERRORS}},
            "patch": {"summary": "A new lifetime from now (like E2B's set_timeout), new metadata or idle rules",
                      "parameters": [SANDBOX_ID], "requestBody": body(requests.update_sandbox),
                      "responses": {"200": reply("the sandbox", ref("Sandbox")), **ERRORS,
                                    "409": error("the sandbox has ended"),
                                    "422": error("a value out of range (the message names the field)"),
                                    **STORE_UNAVAILABLE}},
            "delete": {"summary": "Terminate a sandbox (the record and its executions stay, status terminated, "
                                  "for --history-retention)",
                       "parameters": [SANDBOX_ID], "responses": {"204": reply("terminated"), **ERRORS,
                                                                 **NOT_RUNNING, **STORE_UNAVAILABLE}},
        },
        "/api/v1/sandboxes/{sandbox_id}/execute": {
            "post": {
                "summary": "Run code: the whole Execution, or a live stream with Accept: application/x-ndjson "
                           "or text/event-stream",
                "parameters": [SANDBOX_ID], "requestBody": body(requests.execute),
                "responses": {"200": {"description": "the Execution, or its events then the Execution",
                                      "content": {JSON: {"schema": ref("Execution")},
                                                  **{media: {"schema": {"type": "string"}} for media in STREAMS}}},
                              **ERRORS, **NOT_RUNNING, **NOT_ACCEPTABLE, "413": error("code over 1 MiB"),
                              "422": error("timeout out of range"),
                              "429": error("too many executions waiting in this sandbox (too_many_queued), or over "
                                           "the executions-per-minute quota (or resuming the sandbox would exceed "
                                           "one); Retry-After"), **STORE_UNAVAILABLE}},
        },
        "/api/v1/sandboxes/{sandbox_id}/executions": {
            "get": {"summary": "A sandbox's executions, oldest first", "parameters": [SANDBOX_ID, *PAGING],
                    "responses": {"200": reply("executions", {"type": "object", "properties": {
                        "executions": {"type": "array", "items": ref("Execution")}}}), **ERRORS}},
        },
        "/api/v1/executions/{execution_id}": {
            "get": {"summary": "One execution, also after the client that ran it went away",
                    "parameters": [EXECUTION_ID],
                    "responses": {"200": reply("the execution", ref("Execution")), **ERRORS}},
        },
        "/api/v1/executions/{execution_id}/events": {
            "get": {"summary": "Re-attach to an execution's stream: its events from the after-th on while it runs "
                               "(Accept: application/x-ndjson or text/event-stream), then the final Execution",
                    "parameters": [EXECUTION_ID, {"name": "after", "in": "query",
                                                  "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                                                  "description": "how many events the client already has"}],
                    "responses": {"200": {"description": "the events, then the Execution",
                                          "content": {media: {"schema": {"type": "string"}} for media in STREAMS}},
                                  **ERRORS, **NOT_ACCEPTABLE}},
        },
        "/api/v1/sandboxes/{sandbox_id}/interrupt": sandbox_action(
            "Interrupt the running execution (state is kept)", {"200": reply("the sandbox", ref("Sandbox"))}),
        "/api/v1/sandboxes/{sandbox_id}/restart": sandbox_action(
            "A fresh kernel, same sandbox", {"200": reply("the sandbox", ref("Sandbox")),
                                             "503": error("the sandbox could not be restarted")}),
        "/api/v1/sandboxes/{sandbox_id}/pause": sandbox_action(
            "Save files and variables to the gateway's disk and stop the container (status paused)",
            {"200": reply("the paused sandbox, with its snapshot", ref("Sandbox")),
             "507": error("the saved state would be over the sandbox's disk_mb")}),
        "/api/v1/sandboxes/{sandbox_id}/resume": sandbox_action(
            "Run a paused sandbox again, its files and variables restored (see restore)",
            {"200": reply("the running sandbox, with its restore report", ref("Sandbox")),
             "503": error("the sandbox could not be resumed (it stays paused)")}),
        "/api/v1/sandboxes/{sandbox_id}/metrics": {
            "get": {"summary": "What the sandbox uses now: CPU seconds, memory (current, peak), disk, pids",
                    "parameters": [SANDBOX_ID],
                    "responses": {"200": reply("usage beside the limits", {"type": "object"}), **ERRORS,
                                  **NOT_RUNNING}},
        },
        "/api/v1/usage": {
            "get": {"summary": "Your use of each quota beside its limit (0: no limit)",
                    "responses": {"200": reply("sandboxes, cpu, memory_mb, paused_sandboxes, executions_per_minute",
                                               {"type": "object"}), **ERRORS}},
        },
        "/api/v1/events": {
            "get": {"summary": "Lifecycle events as Server-Sent Events (yours; everyone's for admin), resumable",
                    "parameters": [{"name": "Last-Event-ID", "in": "header",
                                    "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                                    "description": "resume after this event (what EventSource sends)"},
                                   {"name": "after", "in": "query",
                                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                                    "description": "start after this event id (0: all retained); default: from now"},
                                   {"name": "type", "in": "query", "style": "form", "explode": True,
                                    "schema": {"type": "array", "items": {"enum": EVENT_TYPES}},
                                    "description": "only these event types (repeatable)"}],
                    "responses": {"200": reply("id:/event:/data: frames", {"type": "string"}, "text/event-stream"),
                                  **ERRORS}},
        },
        "/api/v1/sandboxes/{sandbox_id}/stream": {
            "get": {"summary": "WebSocket: execute and interrupt messages in, output events out",
                    "parameters": [SANDBOX_ID], "responses": WEBSOCKET},
        },
        "/api/v1/sandboxes/{sandbox_id}/notebook": {
            "get": {"summary": "The execution history as an .ipynb (streamed)", "parameters": [SANDBOX_ID],
                    "responses": {"200": reply("an nbformat 4.5 notebook", ref("Notebook"), "application/x-ipynb+json"),
                                  **ERRORS}},
        },
        "/api/v1/sandboxes/{sandbox_id}/contexts": {
            "post": {"summary": "Start another kernel in the sandbox: a context (python, bash, r, javascript, "
                                "typescript), sharing its files and limits",
                     "parameters": [SANDBOX_ID], "requestBody": body(schemas.CREATE_CONTEXT, required=False),
                     "responses": {"201": reply("the context", CONTEXT), **ERRORS,
                                   "404": error("no such sandbox, or its cwd is not a directory in it (file_not_found)"),
                                   "409": error("the sandbox is not running, or its image has no kernel for the "
                                                "language (language_unavailable)"),
                                   **RESUME_OVER_QUOTA, "503": error("its kernel did not start, or did not answer")}},
            "get": {"summary": "The sandbox's contexts: its own kernel (the default, python) and the others",
                    "parameters": [SANDBOX_ID],
                    "responses": {"200": reply("the contexts", {"type": "object", "properties": {
                        "contexts": {"type": "array", "items": CONTEXT}}}), **ERRORS}},
        },
        "/api/v1/sandboxes/{sandbox_id}/contexts/{context_id}": {
            "delete": {"summary": "Stop a context's kernel (not the default context: delete the sandbox)",
                       "parameters": [SANDBOX_ID, CONTEXT_ID],
                       "responses": {"204": {"description": "removed"}, **ERRORS,
                                     "409": error("the default context (the sandbox's own kernel: default_context)")}},
        },
        "/api/v1/sandboxes/{sandbox_id}/contexts/{context_id}/restart": {
            "post": {"summary": "A fresh kernel for the context, in its directory", "parameters": [SANDBOX_ID, CONTEXT_ID],
                     "responses": {"200": reply("the context", CONTEXT), **ERRORS, **NOT_RUNNING,
                                   **RESUME_OVER_QUOTA, "503": error("its kernel did not start again")}},
        },
        "/api/v1/sandboxes/{sandbox_id}/files": {
            "get": {"summary": "List a directory of the working directory",
                    "parameters": [SANDBOX_ID, DIRECTORY_PATH],
                    "responses": {"200": reply("entries", {"type": "object"}), **ERRORS, **PATH_ERRORS,
                                  **FILE_ERRORS}},
        },
        "/api/v1/sandboxes/{sandbox_id}/files/{path}": {
            "get": {"summary": "Download a file", "parameters": [SANDBOX_ID, FILE_PATH],
                    "responses": {"200": reply("the file's bytes", {"type": "string", "format": "binary"},
                                               "application/octet-stream"), **ERRORS, **PATH_ERRORS,
                                  **FILE_ERRORS,
                                  "413": error("over the file size limit")}},
            "put": {"summary": "Upload a file (raw body)", "parameters": [SANDBOX_ID, FILE_PATH],
                    "requestBody": body({"type": "string", "format": "binary"}, "application/octet-stream",
                                        required=False),  # no body: an empty file
                    "responses": {"201": reply("created", {"type": "object"}),
                                  "200": reply("replaced", {"type": "object"}), **ERRORS, **PATH_ERRORS,
                                  **FILE_ERRORS,
                                  "413": error("over the file size limit"),
                                  "507": error("the sandbox's disk is full")}},
            "delete": {"summary": "Remove a file or directory", "parameters": [SANDBOX_ID, FILE_PATH],
                       "responses": {"204": reply("removed"), **ERRORS, **PATH_ERRORS, **FILE_ERRORS}},
        },
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": reply("OpenAPI 3.1", {"type": "object"})}}},
    }


OPERATIONS = {
    "/health": {"get": {"summary": "Status, provisioner, pool", "security": [],
                        "responses": {"200": reply("health", {"type": "object"})}}},
    "/ready": {"get": {"summary": "Whether sandboxes can start here", "security": [],
                       "responses": {"200": reply("ready", {"type": "object"}),
                                     "503": reply("not ready, with reasons", {"type": "object"})}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                         "responses": {"200": reply("text exposition format", {"type": "string"}, "text/plain")}}},
}


def jupyter_paths(requests: Requests) -> dict[str, Any]:
    """The Jupyter Server kernel API (what Jupyter Kernel Gateway serves): each kernel is a sandbox."""
    kernel_errors = {**ERRORS, "404": error("no such kernel (also someone else's), or no such kernelspec")}
    return {
        "/api": {"get": {"summary": "Jupyter Server's version", "security": [],
                         "responses": {"200": reply("the version", {"type": "object", "properties": {
                             "version": {"type": "string"}}})}}},
        "/api/kernelspecs": {"get": {"summary": "The kernelspec sandboxes run", "responses": {
            "200": reply("kernelspecs", {"type": "object", "required": ["default", "kernelspecs"], "properties": {
                "default": {"type": "string"}, "kernelspecs": {"type": "object"}}}), "401": ERRORS["401"]}}},
        "/api/kernelspecs/{kernel_name}": {"get": {
            "summary": "One kernelspec",
            "parameters": [{"name": "kernel_name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": reply("the kernelspec", {"type": "object"}), **kernel_errors}}},
        "/api/kernels": {
            "get": {"summary": "Your kernels (sandboxes not ended, and their contexts)",
                    "responses": {"200": reply("kernels", {"type": "array", "items": ref("Kernel")}),
                                  "401": ERRORS["401"]}},
            "post": {"summary": "Start a kernel: a new sandbox (python3), or a context in a new sandbox "
                                "(bash, ir, deno)",
                     "requestBody": body(requests.start_kernel, required=False),
                     "responses": {"201": reply("the kernel", ref("Kernel")), **kernel_errors,
                                   "409": error("that language cannot run here (language_unavailable, "
                                                "contexts_unavailable, sandbox_not_running)"),
                                   "429": error("too many live sandboxes for this user"),
                                   "503": error("the sandbox could not be started, or the store cannot commit "
                                                "writes")}},
        },
        "/api/kernels/{kernel_id}": {
            "get": {"summary": "One kernel", "parameters": [KERNEL_ID],
                    "responses": {"200": reply("the kernel", ref("Kernel")), **kernel_errors}},
            "delete": {"summary": "Shut a kernel down (its sandbox is terminated, if started for it; a context "
                                  "made in another sandbox is removed)", "parameters": [KERNEL_ID],
                       "responses": {"204": reply("shut down"), **kernel_errors, **NOT_RUNNING,
                                     **STORE_UNAVAILABLE}},
        },
        "/api/kernels/{kernel_id}/interrupt": {"post": {
            "summary": "Interrupt the kernel", "parameters": [KERNEL_ID],
            "responses": {"204": reply("interrupted"), **kernel_errors, **NOT_RUNNING}}},
        "/api/kernels/{kernel_id}/restart": {"post": {
            "summary": "Restart the kernel (empty state)", "parameters": [KERNEL_ID],
            "responses": {"200": reply("the kernel", ref("Kernel")), **kernel_errors, **NOT_RUNNING,
                          **RESUME_OVER_QUOTA, "503": error("the kernel could not be restarted"),
                          **STORE_UNAVAILABLE}}},
        "/api/kernels/{kernel_id}/channels": {"get": {
            "summary": "WebSocket: the Jupyter kernel protocol (JSON, or v1.kernel.websocket.jupyter.org)",
            "parameters": [KERNEL_ID], "responses": WEBSOCKET}},
    }


def document(*, policy: ResourcePolicy | None = None, lifetimes: LifetimePolicy | None = None,
             kernel_names: list[str] | None = None, isolations: list[str] | None = None) -> dict[str, Any]:
    """The document for a gateway with these policies (the defaults' if none is given); ``kernel_names``:
    the kernelspecs ``POST /api/kernels`` starts (default: every language's); ``isolations``: what a
    new sandbox may ask for here (none: the field is refused)."""
    names = sorted(KERNELSPEC_LANGUAGES) if kernel_names is None else kernel_names
    requests = Requests(policy or ResourcePolicy(), lifetimes or LifetimePolicy(), names, isolations)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Code Interpreter Gateway", "version": __version__,
                 "description": "Stateful sandboxed Jupyter kernels over REST, streams and WebSockets, and the "
                                "Jupyter Server kernel API (/api/kernels, /api/kernelspecs). Any request with a "
                                "body may be answered 503 server_busy (Retry-After: 5, then the connection is "
                                "closed) while the gateway holds as many request bodies in memory as it may "
                                "(--max-buffered-body-bytes)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Sandbox": SANDBOX, "Execution": EXECUTION, "Error": ERROR, "Kernel": KERNEL,
                        "Notebook": history_schema(), **seed_schemas()},
        },
        "paths": {**v1_paths(requests), **OPERATIONS, **jupyter_paths(requests)},
    }


class OpenAPIHandler(APIHandler):
    auth_required = False

    def initialize(self, sandboxes: SandboxManager, launcher: KernelLauncher,  # type: ignore[override]
                   **base: Any) -> None:
        super().initialize(**base)
        self.sandboxes = sandboxes
        self.launcher = launcher

    def get(self) -> None:
        self.write_json(document(policy=self.sandboxes.policy, lifetimes=self.sandboxes.lifetimes,
                                 kernel_names=startable_kernels(self.launcher),
                                 isolations=self.sandboxes.isolation.requestable(self.launcher.unavailable())))
