"""gateway.sandboxes.inputs: code and environment variables no execution or process can take are
refused, by every way in (REST, /stream, the Jupyter kernels API, E2B, MCP), before anything
starts or is stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websockets
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.errors import InvalidCode, InvalidEnv, PayloadTooLarge
from gateway.sandboxes.inputs import MAX_CODE_BYTES, check_code, check_env
from tests.api.test_errors import assert_error
from tests.api.test_sockets import connect
from tests.gateways import InProcessGateway, auth, create
from tests.waiting import executions_of

#: Code an execution cannot take, the error's code, and what its message says.
BAD_CODE = [
    ("x = '\ud800'", "invalid_code", "lone surrogate (U+D800 at character 5)"),
    ("print(1)\x00", "invalid_code", "NUL character (at character 8)"),
    ("#" * (MAX_CODE_BYTES + 1), "payload_too_large", "larger than 1048576 bytes"),
    ("é" * (MAX_CODE_BYTES // 2 + 1), "payload_too_large", "larger than 1048576 bytes"),  # (over in bytes only)
]
#: Variables no process can be given, and what the message says (never the value: it may be a secret).
BAD_ENV: list[tuple[Any, str]] = [
    ({"": "x"}, "'env.': the variable's name is empty"),
    ({"A=B": "x"}, "'env.A=B': the variable's name holds '='"),
    ({"A\x00B": "x"}, "'env.A\\x00B': the variable's name holds a NUL character (at character 1)"),
    ({"\udc80": "x"}, "'env.\\udc80': the variable's name holds a lone surrogate (U+DC80 at character 0)"),
    ({"TOKEN": "se\x00cret"}, "'env.TOKEN': the value holds a NUL character (at character 2)"),
    ({"TOKEN": "secret\ud83d"}, "'env.TOKEN': the value holds a lone surrogate (U+D83D at character 6)"),
    ({"A": 1}, "'env.A' must be a string"),
    (["A=1"], "'env' must be an object of strings"),
]


@pytest.mark.parametrize("code, error, mentions", BAD_CODE)
def test_check_code_refuses_what_no_execution_can_take(code: str, error: str, mentions: str) -> None:
    with pytest.raises((InvalidCode, PayloadTooLarge)) as refused:
        check_code(code)
    assert refused.value.code == error and mentions in refused.value.message
    assert "field 'code'" in refused.value.message
    with pytest.raises((InvalidCode, PayloadTooLarge), match="field 'cells.3'"):
        check_code(code, "cells.3")


def test_check_code_takes_any_text_up_to_the_limit() -> None:
    for code in ("", "1 + 1", "print('é ✓ \U0001F600\\x00')", "#" * MAX_CODE_BYTES, "é" * (MAX_CODE_BYTES // 2)):
        assert check_code(code) is code


@pytest.mark.parametrize("env, mentions", BAD_ENV)
def test_check_env_refuses_what_no_process_can_be_given(env: Any, mentions: str) -> None:
    with pytest.raises(InvalidEnv) as refused:
        check_env(env)
    assert refused.value.code == "invalid_env" and refused.value.status == 400
    assert mentions in refused.value.message, refused.value.message
    assert "secret" not in refused.value.message and "se\x00cret" not in refused.value.message


def test_check_env_takes_any_names_and_values_a_process_can_have() -> None:
    assert check_env(None) == {}
    env = {"PATH": "/bin", "lower.dotted-name": "", "É": "é ✓", "X": "a=b"}
    assert check_env(env, "envs") is env
    with pytest.raises(InvalidEnv, match="^field 'envVars.A=B'"):
        check_env({"A=B": "x"}, "envVars")
    long = "N" * 1000 + "="
    with pytest.raises(InvalidEnv) as refused:
        check_env({long: "x"})
    assert len(refused.value.message) < 200  # (a long name is cut short in the message)


# -- every way in, over a real gateway -----------------------------------------------------------------


def escaped(body: Any) -> bytes:
    """``body`` as JSON with ``\\u`` escapes (httpx's ``json=`` cannot send a lone surrogate)."""
    return json.dumps(body).encode()


async def test_rest_execute_and_create_refuse_bad_code_and_env_changing_nothing(alice: httpx.AsyncClient,
                                                                              sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    for code, error, mentions in BAD_CODE:
        for where in ({}, {"language": "bash"}):  # (the bash context is not started for it either)
            response = await alice.post(f"/api/v1/sandboxes/{sid}/execute", content=escaped({"code": code, **where}))
            assert_error(response, 413 if error == "payload_too_large" else 400, error, mentions)
    for env, mentions in BAD_ENV:
        response = await alice.post("/api/v1/sandboxes", content=escaped({"env": env}))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] in ("invalid_env", "invalid_request")  # (the schema checks types)
    env, mentions = BAD_ENV[5]  # what the schema lets through: a lone surrogate in a value
    assert_error(await alice.post("/api/v1/sandboxes", content=escaped({"env": env})), 400, "invalid_env", mentions)
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [], "execution_count": None},
        {"cell_type": "code", "source": ["y = 2\n", "z = '\x00'"], "metadata": {}, "outputs": [],
         "execution_count": None}]}
    assert_error(await alice.post("/api/v1/sandboxes", content=escaped({"notebook": notebook})), 400, "invalid_code",
                 "field 'notebook.cells.1.source' holds a NUL character (at character 11)")
    assert [s["id"] for s in (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]] == [sid]
    assert await executions_of(alice, sid) == []
    assert len((await alice.get(f"/api/v1/sandboxes/{sid}/contexts")).json()["contexts"]) == 1


async def test_bad_code_does_not_resume_a_paused_sandbox(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    assert (await alice.post(f"/api/v1/sandboxes/{sid}/pause")).status_code == 200
    response = await alice.post(f"/api/v1/sandboxes/{sid}/execute", content=escaped({"code": "\x00"}))
    assert_error(response, 400, "invalid_code")
    assert (await alice.get(f"/api/v1/sandboxes/{sid}")).json()["status"] == "paused"
    assert await executions_of(alice, sid) == []


async def test_stream_socket_refuses_bad_code_with_an_error_event(gateway: InProcessGateway, alice: httpx.AsyncClient,
                                                                  sandbox: dict[str, Any]) -> None:
    async with connect(gateway, sandbox["id"], max_size=None) as socket:
        for n, (code, error, mentions) in enumerate(BAD_CODE):
            await socket.send(json.dumps({"type": "execute", "id": n, "language": "bash", "code": code}))
            event = json.loads(await socket.recv())
            assert (event["type"], event["id"], event["error"]["code"]) == ("error", n, error)
            assert mentions in event["error"]["message"]
    assert await executions_of(alice, sandbox["id"]) == []
    assert len((await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/contexts")).json()["contexts"]) == 1


async def test_jupyter_kernels_api_refuses_a_bad_env(alice: httpx.AsyncClient) -> None:
    for name in ("python3", "bash"):
        response = await alice.post("/api/kernels", content=escaped({"name": name, "env": {"K": "v\udc80"}}))
        assert_error(response, 400, "invalid_env", "'env.K': the value holds a lone surrogate")
    assert (await alice.get("/api/v1/sandboxes")).json()["sandboxes"] == []


async def test_e2b_refuses_bad_code_and_env_changing_nothing(gateway: InProcessGateway, alice: httpx.AsyncClient,
                                                             sandbox: dict[str, Any]) -> None:
    sid = sandbox["id"]
    key = {"X-API-Key": await gateway.app.keyring.create("alice", "e2b")}
    made = await alice.post("/e2b/sandboxes", json={"templateID": "base", "envVars": {"A=B": "x"}}, headers=key)
    assert made.status_code == 400 and made.json()["message"] == (
        "field 'envVars.A=B': the variable's name holds '='"), made.text
    traffic = {"E2b-Sandbox-Id": sid, "X-Access-Token": gateway.app.sandboxes._sandboxes[sid].access_token}
    interpreter = {**traffic, "E2b-Sandbox-Port": "49999"}
    for code, error, mentions in BAD_CODE:
        response = await alice.post("/e2b/sandbox/execute", content=escaped({"code": code, "language": "bash"}),
                                    headers=interpreter)
        assert response.status_code == (413 if error == "payload_too_large" else 400) and mentions in response.text
    for env, mentions in BAD_ENV:
        response = await alice.post("/e2b/sandbox/execute", content=escaped({"code": "1", "env_vars": env}),
                                    headers=interpreter)
        # (a body not of E2B's types is refused by its schema first, naming the field)
        expected = "field 'env_vars'" if isinstance(env, list) else mentions.replace("'env", "'env_vars")
        assert response.status_code == 400 and expected in response.text, response.text
    # envd's commands (Connect RPC, JSON): the variables of a command, before it starts.
    envelope = json.dumps({"process": {"cmd": "/bin/echo", "args": ["started"], "envs": {"A=B": "x"}}}).encode()
    started = await alice.post("/e2b/sandbox/process.Process/Start",
                               content=b"\0" + len(envelope).to_bytes(4, "big") + envelope,
                               headers={**traffic, "E2b-Sandbox-Port": "49983",
                                        "Content-Type": "application/connect+json"})
    assert b'"invalid_argument"' in started.content and b"'envs.A=B': the variable's name holds '='" in started.content
    assert b"started" not in started.content
    assert [s["id"] for s in (await alice.get("/api/v1/sandboxes")).json()["sandboxes"]] == [sid]
    assert await executions_of(alice, sid) == []
    assert len((await alice.get(f"/api/v1/sandboxes/{sid}/contexts")).json()["contexts"]) == 1


async def test_mcp_run_code_refuses_bad_code_before_making_a_sandbox(gateway: InProcessGateway,
                                                                    alice: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(headers=auth("alice"), timeout=120) as http, \
            Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http)) as client:
        for code, error, mentions in BAD_CODE[1:3]:  # (the MCP SDK's parser refuses a lone surrogate itself)
            refused = await client.call_tool("run_code", {"code": code})
            text = "\n".join(c.text for c in refused.content if c.type == "text")
            assert refused.is_error and f"run_code: {error}: " in text and mentions in text, text
        assert (await alice.get("/api/v1/sandboxes")).json()["sandboxes"] == []  # (no session sandbox made)
        ran = await client.call_tool("run_code", {"code": "6 * 7"})
        assert not ran.is_error and "42" in "\n".join(c.text for c in ran.content if c.type == "text")
    sandbox = (await alice.get("/api/v1/sandboxes")).json()["sandboxes"][0]
    assert [e["code"] for e in await executions_of(alice, sandbox["id"])] == ["6 * 7"]


async def test_good_env_still_reaches_the_code(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice, env={"GREETING": "é ✓ = fine"})
    response = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute",
                                json={"code": "import os; os.environ['GREETING']"})
    assert response.json()["result"] == {"text/plain": "'é ✓ = fine'"}
