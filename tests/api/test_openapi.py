"""The OpenAPI document: served without a key, describes every v1 route, with the schemas the handlers use."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from tornado import web

from gateway.api import schemas
from gateway.api.openapi import document
from tests.gateways import InProcessGateway


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def template(pattern: str) -> str:
    """``/api/v1/sandboxes/([0-9a-fA-F-]{1,64})/files/(.+)`` -> ``/api/v1/sandboxes/{}/files/{}``."""
    pattern = pattern.rstrip("$").replace("/?", "")
    return re.sub(r"\((?:\?P<\w+>)?[^()]*(?:\([^()]*\)[^()]*)*\)", "{}", pattern)


def implemented(handler: type[web.RequestHandler]) -> set[str]:
    """The HTTP methods a handler class answers (those it defines, not Tornado's 405 defaults)."""
    return {method.lower() for method in handler.SUPPORTED_METHODS
            if getattr(handler, method.lower()) is not getattr(web.RequestHandler, method.lower())}


async def test_served_and_complete(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        response = await anonymous.get("/api/v1/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served["openapi"].startswith("3.1")
    assert served == json.loads(json.dumps(document()))
    rules = gateway.app.web_app.default_router.rules[0].target.rules
    routed = {template(rule.matcher.regex.pattern) for rule in rules}
    ours = {path for path in routed if path.startswith("/api/v1") or path in ("/health", "/ready", "/metrics")}
    described = {re.sub(r"\{\w+\}", "{}", path) for path in served["paths"]}
    assert ours <= described, ours - described  # every route of the v1 API and operations is described
    for path, operations in served["paths"].items():
        # ... by a path that is routed, to a handler answering exactly the methods described.
        concrete = re.sub(r"\{\w+\}", "0123abcd", path)
        handler = next((rule.target for rule in rules if rule.matcher.regex.match(concrete)), None)
        assert handler is not None, f"{path} is described but not routed"
        assert set(operations) & HTTP_METHODS == implemented(handler) - {"options"}, path  # (options: CORS preflights)


def test_request_bodies_are_the_validated_schemas_with_the_policies_ranges() -> None:
    paths = document()["paths"]
    published = {
        "create": (paths["/api/v1/sandboxes"]["post"], schemas.CREATE_SANDBOX),
        "execute": (paths["/api/v1/sandboxes/{sandbox_id}/execute"]["post"], schemas.EXECUTE),
        "update": (paths["/api/v1/sandboxes/{sandbox_id}"]["patch"], schemas.UPDATE_SANDBOX),
    }
    for name, (operation, validated) in published.items():
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == set(validated["properties"]), name
        for field, rules in validated["properties"].items():  # the same rules, ranges added
            if field not in ("resources", "notebook"):
                assert schema["properties"][field] == {**schema["properties"][field], **rules}, (name, field)
        assert schema.get("additionalProperties") == validated.get("additionalProperties"), name


def test_the_published_schemas_refuse_a_nul_in_code() -> None:
    """What the handlers refuse as ``invalid_code`` is no schema-valid request either (a fuzzer that
    sends schema-valid requests expects them accepted): a NUL in an execution's code or in a seed
    notebook's code cell (a markdown cell may hold one: it never runs)."""
    published = document()

    def valid(schema: dict[str, Any], value: Any) -> bool:
        return Draft202012Validator({**schema, "components": published["components"]}).is_valid(value)

    execute = published["paths"]["/api/v1/sandboxes/{sandbox_id}/execute"]["post"]
    execute_body = execute["requestBody"]["content"]["application/json"]["schema"]
    assert valid(execute_body, {"code": "1 + 1"}) and not valid(execute_body, {"code": "1\x00"})
    notebook = {"$ref": "#/components/schemas/Notebook"}

    def with_cells(*cells: dict[str, Any]) -> dict[str, Any]:
        return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)}

    def cell(kind: str, source: Any) -> dict[str, Any]:
        extra = {"outputs": [], "execution_count": None} if kind == "code" else {}
        return {"cell_type": kind, "id": f"{kind}-1", "metadata": {}, "source": source, **extra}

    assert valid(notebook, with_cells(cell("code", "x = 1"), cell("code", ["y = 2\n", "x + y"])))
    assert not valid(notebook, with_cells(cell("code", "x = 1\x00")))
    assert not valid(notebook, with_cells(cell("code", ["y = 2\n", "\x00"])))
    assert valid(notebook, with_cells(cell("markdown", "a \x00")))
