"""The OpenAPI document: served without a key, describes every v1 route, with the schemas the handlers use."""

from __future__ import annotations

import re

from gateway.api import schemas
from gateway.api.openapi import document
from tests.gateways import InProcessGateway


def template(pattern: str) -> str:
    """``/api/v1/sandboxes/([0-9a-fA-F-]{1,64})/files/(.+)`` -> ``/api/v1/sandboxes/{}/files/{}``."""
    pattern = pattern.rstrip("$").replace("/?", "")
    return re.sub(r"\((?:\?P<\w+>)?[^()]*(?:\([^()]*\)[^()]*)*\)", "{}", pattern)


async def test_served_and_complete(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as anonymous:
        response = await anonymous.get("/api/v1/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served["openapi"].startswith("3.1")
    described = {re.sub(r"\{\w+\}", "{}", path) for path in served["paths"]}
    routed = {template(rule.matcher.regex.pattern) for rule in gateway.app.web_app.default_router.rules[0].target.rules}
    ours = {path for path in routed if path.startswith("/api/v1") or path in ("/health", "/ready", "/metrics")}
    assert len(ours) >= 15
    assert ours <= described, ours - described


def test_request_bodies_are_the_validated_schemas() -> None:
    paths = document()["paths"]
    create = paths["/api/v1/sandboxes"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    execute = paths["/api/v1/sandboxes/{sandbox_id}/execute"]["post"]["requestBody"]["content"]["application/json"]
    assert create is schemas.CREATE_SANDBOX
    assert execute["schema"] is schemas.EXECUTE
