"""The OpenAPI document: served without a key, describes every v1 route, with the schemas the handlers use."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from tornado import web

from gateway.api import schemas
from gateway.api.openapi import document
from gateway.execution.notebook import InvalidNotebook, seed_cells
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
    notebook = {"$ref": "#/components/schemas/SeedNotebook"}

    def with_cells(*cells: dict[str, Any]) -> dict[str, Any]:
        return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)}

    def cell(kind: str, source: Any) -> dict[str, Any]:
        extra = {"outputs": [], "execution_count": None} if kind == "code" else {}
        return {"cell_type": kind, "id": f"{kind}-1", "metadata": {}, "source": source, **extra}

    assert valid(notebook, with_cells(cell("code", "x = 1"), cell("code", ["y = 2\n", "x + y"])))
    assert not valid(notebook, with_cells(cell("code", "x = 1\x00")))
    assert not valid(notebook, with_cells(cell("code", ["y = 2\n", "\x00"])))
    assert valid(notebook, with_cells(cell("markdown", "a \x00")))


def seed(minor: int, cell: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A one-cell seed notebook of nbformat 4.``minor``."""
    code = {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None}
    return {"nbformat": 4, "nbformat_minor": minor, "metadata": metadata, "cells": [{**code, **(cell or {})}]}


#: Seed notebooks each minor version's own schema decides on differently.
SEEDS = {
    "4.0 without ids": seed(0), "4.4 without ids": seed(4), "4.5 with ids": seed(5, {"id": "a-1"}),
    "4.5 without ids (the gateway gives them)": seed(5), "4.7 (held to 4.5's)": seed(7, {"id": "a"}),
    "4.4 with an id (4.5's field)": seed(4, {"id": "a"}), "4.5 with a bad id": seed(5, {"id": "a b"}),
    "4.7 with a bad id": seed(7, {"id": ""}),
    "4.1 with a title not a string": seed(1, title=5), "4.2 with a title not a string": seed(2, title=5),
    "4.2 with a cell's jupyter metadata not an object": seed(2, {"metadata": {"jupyter": 1}}),
    "4.3 with a cell's jupyter metadata not an object": seed(3, {"metadata": {"jupyter": 1}}),
    "4.3 with a cell's execution metadata not an object": seed(3, {"metadata": {"execution": 1}}),
    "4.4 with a cell's execution metadata not an object": seed(4, {"metadata": {"execution": 1}}),
    "a negative minor": seed(-1), "a minor not an integer": seed("5"),  # type: ignore[arg-type]
    "nbformat 3": {**seed(0), "nbformat": 3},
    "no cells": {key: value for key, value in seed(5).items() if key != "cells"},
}


def test_the_published_seed_notebook_is_what_the_gateway_accepts() -> None:
    """A seed notebook is held to the schema of the minor version it says it is (as
    ``nbformat.validate`` holds it), cell ids left out or not; the published schema says just that,
    so each of these is accepted by both or refused by both (a fuzzer holds the gateway to it)."""
    published = document()
    validator = Draft202012Validator({"$ref": "#/components/schemas/SeedNotebook",
                                      "components": published["components"]})
    create = published["paths"]["/api/v1/sandboxes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["properties"]["notebook"]["$ref"] == "#/components/schemas/SeedNotebook"

    def accepted(notebook: dict[str, Any]) -> bool:
        try:
            seed_cells(notebook)
        except InvalidNotebook:
            return False
        return True

    verdicts = {name: (validator.is_valid(notebook), accepted(notebook)) for name, notebook in SEEDS.items()}
    assert all(published == gateway for published, gateway in verdicts.values()), verdicts
    assert {name for name, (valid, _) in verdicts.items() if valid} == {
        "4.0 without ids", "4.4 without ids", "4.5 with ids", "4.5 without ids (the gateway gives them)",
        "4.7 (held to 4.5's)", "4.1 with a title not a string", "4.2 with a cell's jupyter metadata not an object",
        "4.3 with a cell's execution metadata not an object",
    }
