"""The OpenAPI 3.1 document of the v1 API, served at ``/api/v1/openapi.json``.

Request bodies are the very schemas the handlers validate with (``gateway.api.schemas``), so the
document cannot drift from what the gateway accepts; a test checks every route is described.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.api import schemas
from gateway.api.base import APIHandler
from gateway.api.sandboxes import STATUSES

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def body(schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {media_type: {"schema": schema}}}


def reply(description: str, schema: dict[str, Any] | None = None, media_type: str = JSON) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {media_type: {"schema": schema}}
    return answer


ERRORS = {
    "400": reply("malformed JSON, an unknown field or a wrong type (the message names the field)", ref("Error")),
    "401": reply("no API key, or an unknown one", ref("Error")),
    "404": reply("no such sandbox or execution (also someone else's)", ref("Error")),
}
SANDBOX_ID = {"name": "sandbox_id", "in": "path", "required": True, "schema": {"type": "string"}}
EXECUTION_ID = {"name": "execution_id", "in": "path", "required": True, "schema": {"type": "string"}}
FILE_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "relative to the sandbox's working directory"}

SANDBOX = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "owner": {"type": "string"},
        "status": {"enum": ["creating", "running", "paused", "terminating", "terminated", "failed"]},
        "status_reason": {"type": ["string", "null"]}, "provisioner": {"type": "string"},
        "image": {"type": ["string", "null"]}, "resources": schemas.RESOURCES, "env": {"type": "object"},
        "metadata": {"type": "object"}, "figure_formats": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "last_active_at": {"type": "string", "format": "date-time"},
        "terminated_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "idle_timeout": {"type": "number"}, "on_idle": {"enum": ["pause", "terminate"]},
        "auto_resume": {"type": "boolean"},
        "execution_count": {"type": "integer"},
        "snapshot": {"type": ["object", "null"], "description": "while paused: what was saved"},
        "restore": {"type": ["object", "null"], "description": "after a resume: files, variables, lost, at"},
        "template": {"type": ["string", "null"], "description": "the E2B template it was created from, if any"},
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
        "timeout": {"type": "number"}, "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
        "duration_ms": {"type": ["number", "null"]},
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
}


#: While the store cannot commit, changes are refused rather than acknowledged.
STORE_UNAVAILABLE = {"503": reply("the store cannot commit writes right now (store_unavailable)", ref("Error"))}


def sandbox_action(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": [SANDBOX_ID], "responses": {**ok, **ERRORS,
            "409": reply("the sandbox is not running, or another lifecycle operation of it is under way",
                         ref("Error"))}}}


PATHS: dict[str, Any] = {
    "/api/v1/sandboxes": {
        "post": {"summary": "Create a sandbox", "requestBody": {**body(schemas.CREATE_SANDBOX), "required": False},
                 "responses": {"201": reply("the running sandbox", ref("Sandbox")), **ERRORS,
                               "403": reply("network access is not allowed here", ref("Error")),
                               "422": reply("a limit out of range (the message names the field)", ref("Error")),
                               "429": reply("over a quota (live sandboxes, CPU, memory); Retry-After says when to "
                                            "try again", ref("Error")),
                               "503": reply("the sandbox could not be started, or the store cannot commit writes "
                                             "(sandbox_start_failed, store_unavailable)", ref("Error"))}},
        "get": {"summary": "List your sandboxes",
                "parameters": [{"name": "status", "in": "query", "style": "form", "explode": True,
                                "description": "only sandboxes in one of these statuses (repeat it for several)",
                                "schema": {"type": "array", "items": {"enum": STATUSES}}}],
                "responses": {"200": reply("sandboxes", {"type": "object", "properties": {
                    "sandboxes": {"type": "array", "items": ref("Sandbox")}}}), **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}": {
        "get": {"summary": "Show a sandbox", "parameters": [SANDBOX_ID],
                "responses": {"200": reply("the sandbox", ref("Sandbox")), **ERRORS}},
        "patch": {"summary": "A new lifetime from now (like E2B's set_timeout), new metadata or idle rules",
                  "parameters": [SANDBOX_ID], "requestBody": body(schemas.UPDATE_SANDBOX),
                  "responses": {"200": reply("the sandbox", ref("Sandbox")), **ERRORS,
                                "409": reply("the sandbox has ended", ref("Error")),
                                "422": reply("a value out of range (the message names the field)", ref("Error"))}},
        "delete": {"summary": "Terminate a sandbox (the record stays)", "parameters": [SANDBOX_ID],
                   "responses": {"204": reply("terminated"), **ERRORS, **STORE_UNAVAILABLE}},
    },
    "/api/v1/sandboxes/{sandbox_id}/execute": {
        "post": {
            "summary": "Run code: the whole Execution, or a live stream with Accept: application/x-ndjson "
                       "or text/event-stream",
            "parameters": [SANDBOX_ID], "requestBody": body(schemas.EXECUTE),
            "responses": {"200": {"description": "the Execution, or its events then the Execution",
                                  "content": {JSON: {"schema": ref("Execution")},
                                              "application/x-ndjson": {"schema": {"type": "string"}},
                                              "text/event-stream": {"schema": {"type": "string"}}}},
                          **ERRORS, "409": reply("the sandbox is not running", ref("Error")),
                          "413": reply("code over 1 MiB", ref("Error")),
                          "422": reply("timeout out of range", ref("Error")),
                          "429": reply("over the executions-per-minute quota (or resuming the sandbox would "
                                       "exceed one); Retry-After", ref("Error")), **STORE_UNAVAILABLE}},
    },
    "/api/v1/sandboxes/{sandbox_id}/executions": {
        "get": {"summary": "A sandbox's executions, oldest first", "parameters": [
            SANDBOX_ID, {"name": "limit", "in": "query", "schema": {"type": "integer"}},
            {"name": "offset", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": reply("executions", {"type": "object", "properties": {
                "executions": {"type": "array", "items": ref("Execution")}}}), **ERRORS}},
    },
    "/api/v1/executions/{execution_id}": {
        "get": {"summary": "One execution, also after the client that ran it went away",
                "parameters": [EXECUTION_ID], "responses": {"200": reply("the execution", ref("Execution")), **ERRORS}},
    },
    "/api/v1/executions/{execution_id}/events": {
        "get": {"summary": "Re-attach to an execution's stream: its events from the after-th on while it runs "
                           "(Accept: application/x-ndjson or text/event-stream), then the final Execution",
                "parameters": [EXECUTION_ID, {"name": "after", "in": "query", "schema": {"type": "integer"},
                                              "description": "how many events the client already has"}],
                "responses": {"200": {"description": "the events, then the Execution",
                                      "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}/interrupt": sandbox_action(
        "Interrupt the running execution (state is kept)", {"200": reply("the sandbox", ref("Sandbox"))}),
    "/api/v1/sandboxes/{sandbox_id}/restart": sandbox_action(
        "A fresh kernel, same sandbox", {"200": reply("the sandbox", ref("Sandbox"))}),
    "/api/v1/sandboxes/{sandbox_id}/pause": sandbox_action(
        "Save files and variables to the gateway's disk and stop the container (status paused)",
        {"200": reply("the paused sandbox, with its snapshot", ref("Sandbox")),
         "507": reply("the saved state would be over the sandbox's disk_mb", ref("Error"))}),
    "/api/v1/sandboxes/{sandbox_id}/resume": sandbox_action(
        "Run a paused sandbox again, its files and variables restored (see restore)",
        {"200": reply("the running sandbox, with its restore report", ref("Sandbox")),
         "503": reply("the sandbox could not be resumed (it stays paused)", ref("Error"))}),
    "/api/v1/sandboxes/{sandbox_id}/metrics": {
        "get": {"summary": "What the sandbox uses now: CPU seconds, memory (current, peak), disk, pids",
                "parameters": [SANDBOX_ID], "responses": {"200": reply("usage beside the limits", {"type": "object"}),
                                                          **ERRORS}},
    },
    "/api/v1/events": {
        "get": {"summary": "Lifecycle events as Server-Sent Events (yours; everyone's for admin), resumable",
                "parameters": [{"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
                                "description": "resume after this event (what EventSource sends)"},
                               {"name": "after", "in": "query", "schema": {"type": "integer"},
                                "description": "start after this event id (0: all retained); default: from now"},
                               {"name": "type", "in": "query", "schema": {"type": "string"},
                                "description": "only this event type (repeatable)"}],
                "responses": {"200": reply("id:/event:/data: frames", {"type": "string"}, "text/event-stream"),
                              **ERRORS}},
    },
    "/api/v1/usage": {
        "get": {"summary": "Your use of each quota beside its limit (0: no limit)",
                "responses": {"200": reply("sandboxes, cpu, memory_mb, paused_sandboxes, executions_per_minute",
                                           {"type": "object"}), **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}/stream": {
        "get": {"summary": "WebSocket: execute and interrupt messages in, output events out",
                "parameters": [SANDBOX_ID], "responses": {"101": reply("switching to the WebSocket protocol"), **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}/notebook": {
        "get": {"summary": "The execution history as an .ipynb", "parameters": [SANDBOX_ID],
                "responses": {"200": reply("nbformat v4", {"type": "object"}, "application/x-ipynb+json"), **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}/files": {
        "get": {"summary": "List a directory of the working directory",
                "parameters": [SANDBOX_ID, {"name": "path", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": reply("entries", {"type": "object"}), **ERRORS}},
    },
    "/api/v1/sandboxes/{sandbox_id}/files/{path}": {
        "get": {"summary": "Download a file", "parameters": [SANDBOX_ID, FILE_PATH],
                "responses": {"200": reply("the file's bytes", {"type": "string", "format": "binary"},
                                           "application/octet-stream"), **ERRORS}},
        "put": {"summary": "Upload a file (raw body)", "parameters": [SANDBOX_ID, FILE_PATH],
                "requestBody": body({"type": "string", "format": "binary"}, "application/octet-stream"),
                "responses": {"201": reply("created", {"type": "object"}), "200": reply("replaced", {"type": "object"}),
                              **ERRORS, "413": reply("over the file size limit", ref("Error")),
                              "507": reply("the sandbox's disk is full", ref("Error"))}},
        "delete": {"summary": "Remove a file or directory", "parameters": [SANDBOX_ID, FILE_PATH],
                   "responses": {"204": reply("removed"), **ERRORS}},
    },
    "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                     "responses": {"200": reply("OpenAPI 3.1", {"type": "object"})}}},
    "/health": {"get": {"summary": "Status, provisioner, pool", "security": [],
                        "responses": {"200": reply("health", {"type": "object"})}}},
    "/ready": {"get": {"summary": "Whether sandboxes can start here", "security": [],
                       "responses": {"200": reply("ready", {"type": "object"}),
                                     "503": reply("not ready, with reasons", {"type": "object"})}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                         "responses": {"200": reply("text exposition format", {"type": "string"}, "text/plain")}}},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Code Interpreter Gateway", "version": __version__,
                 "description": "Stateful sandboxed Jupyter kernels over REST, streams and WebSockets. "
                                "The Jupyter Server kernel API (/api/kernels, /api/kernelspecs) is served too."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Sandbox": SANDBOX, "Execution": EXECUTION, "Error": ERROR},
        },
        "paths": PATHS,
    }


class OpenAPIHandler(APIHandler):
    auth_required = False

    def get(self) -> None:
        self.write_json(document())
