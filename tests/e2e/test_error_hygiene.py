"""Error hygiene against a real gateway with Docker sandboxes: every validation failure is a 400
naming the field, messages are formatted, and internal error texts (Docker's) are logged, never
returned."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.api.test_errors import assert_error
from tests.conftest import docker_or_fail
from tests.gateways import InProcessGateway

pytestmark = pytest.mark.docker


@pytest.fixture
async def alice(docker_gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with docker_gateway.client("alice") as client:
        yield client


@pytest.mark.parametrize("env, field", [({"BAD-NAME": "x"}, "env"), ({"OK": 1}, "env.OK"), ([], "env")])
async def test_jupyter_kernels_api_validation_is_400_naming_the_field(alice: httpx.AsyncClient, env: Any,
                                                                      field: str) -> None:
    response = await alice.post("/api/kernels", json={"name": "python3", "env": env})
    assert_error(response, 400, "invalid_request", field)
    assert (await alice.get("/api/kernels")).json() == []


async def test_405_says_which_methods_the_route_has(alice: httpx.AsyncClient) -> None:
    response = await alice.put("/api/v1/sandboxes")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    response = await alice.post("/api/v1/executions/abc")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "OPTIONS"}


async def test_tornado_error_messages_are_formatted(alice: httpx.AsyncClient) -> None:
    # Tornado refuses undecodable arguments with a message template and its arguments.
    response = await alice.get("/api/v1/sandboxes?status=%ff")
    assert_error(response, 400, "bad_request", "Invalid unicode in status")
    assert "%s" not in response.json()["error"]["message"]


async def test_docker_error_texts_are_logged_not_returned(tmp_path: Any, caplog: Any) -> None:
    docker_or_fail().close()
    # An engine error (an unknown runtime) whose text names the engine's internals.
    args = ["--DockerProvisioner.run_options=runtime=no-such-runtime-x9"]
    async with InProcessGateway(tmp_path / "data", *args, provisioner="docker") as gateway:
        async with gateway.client("alice") as alice:
            with caplog.at_level(logging.ERROR):
                response = await alice.post("/api/v1/sandboxes", json={})
    assert_error(response, 503, "sandbox_start_failed", "the gateway's log has the details")
    assert "no-such-runtime-x9" not in response.text
    assert "no-such-runtime-x9" in caplog.text  # the operator still learns what happened


async def test_a_tiny_timeout_is_refused_not_a_timed_out_result(alice: httpx.AsyncClient) -> None:
    sandbox = (await alice.post("/api/v1/sandboxes", json={})).json()
    url = f"/api/v1/sandboxes/{sandbox['id']}/execute"
    for tiny in (3.5e-292, 0.05):
        assert_error(await alice.post(url, json={"code": "1 + 1", "timeout": tiny}), 422, "limit_out_of_range",
                     "timeout must be at least 0.1")
    assert_error(await alice.post("/api/v1/sandboxes", json={"timeout": 1e-300}), 422, "limit_out_of_range",
                 "timeout")
    done = await alice.post(url, json={"code": "1 + 1", "timeout": 0.1})
    assert done.status_code == 200 and done.json()["status"] == "completed" and done.json()["result"] == {
        "text/plain": "2"}
