"""The Jupyter Server kernel API over real HTTP and WebSockets, with real Jupyter clients."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import websockets
import zmq
from zmq.utils.monitor import parse_monitor_message
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

from gateway.execution.connection import KernelConnection
from gateway.provisioners.handshakes import Handshake
from tests.api.test_errors import assert_error
from tests.gateways import KEYS, InProcessGateway

TOKEN = {"Authorization": f"token {KEYS['alice']}"}


@pytest.fixture
async def kernel(gateway: InProcessGateway) -> dict[str, Any]:
    async with gateway.client(None) as client:
        response = await client.post("/api/kernels", json={"name": "python3"}, headers=TOKEN)
        assert response.status_code == 201, response.text
        return response.json()


def execute_request(code: str) -> dict[str, Any]:
    msg = Session().msg("execute_request", content={"code": code, "silent": False, "store_history": True,
                                                    "user_expressions": {}, "allow_stdin": False})
    msg["channel"] = "shell"
    msg["header"]["date"] = msg["header"]["date"].isoformat()
    return msg


async def replies_to(socket: Any, msg_id: str, decode: Any = json.loads) -> list[dict[str, Any]]:
    """Messages with parent ``msg_id`` until both the execute_reply and the idle status arrived."""
    got, reply, idle = [], False, False
    while not (reply and idle):
        msg = decode(await asyncio.wait_for(socket.recv(), 60))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        reply = reply or msg["msg_type"] == "execute_reply"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return got


def channels_url(gateway: InProcessGateway, kernel_id: str) -> str:
    return gateway.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4()}"


async def answer_input(socket: Any, value: str, within: float = 30) -> dict[str, Any]:
    """Wait for the kernel's ``input_request`` (the test fails after ``within`` seconds), answer
    it with ``value``; the request."""
    async with asyncio.timeout(within):
        while (asked := json.loads(await socket.recv()))["msg_type"] != "input_request":
            pass
    answer = Session().msg("input_reply", content={"value": value}, parent=asked["header"])
    answer["channel"] = "stdin"
    await socket.send(json.dumps(answer, default=str))
    return cast(dict[str, Any], asked)


async def test_api_and_kernelspecs(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        assert "version" in (await client.get("/api")).json()
        specs = (await client.get("/api/kernelspecs", headers=TOKEN)).json()
        assert specs["default"] == "python3"
        spec = specs["kernelspecs"]["python3"]
        assert spec["name"] == "python3" and spec["spec"]["language"] == "python" and spec["resources"] == {}
        assert (await client.get("/api/kernelspecs/python3", headers=TOKEN)).json() == spec
        assert_error(await client.get("/api/kernelspecs/julia", headers=TOKEN), 404, "not_found")
        assert_error(await client.get("/api/kernelspecs"), 401, "unauthorized")


async def test_kernel_lifecycle(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    kid = kernel["id"]
    assert kernel["name"] == "python3" and kernel["execution_state"] == "idle" and kernel["connections"] == 0
    assert kernel["last_activity"].endswith("Z") and "." in kernel["last_activity"]
    async with gateway.client(None) as client:
        assert [k["id"] for k in (await client.get("/api/kernels", headers=TOKEN)).json()] == [kid]
        assert (await client.get(f"/api/kernels/{kid}", headers=TOKEN)).json()["id"] == kid
        # The kernel is a sandbox of the same owner, usable through our own API too.
        sandbox = (await client.get(f"/api/v1/sandboxes/{kid}", headers=TOKEN)).json()
        assert sandbox["owner"] == "alice" and sandbox["metadata"] == {"started_by": "jupyter"}
        assert (await client.post(f"/api/kernels/{kid}/interrupt", json={}, headers=TOKEN)).status_code == 204
        restarted = await client.post(f"/api/kernels/{kid}/restart", json={}, headers=TOKEN)
        assert restarted.status_code == 200 and restarted.json()["id"] == kid
        assert (await client.delete(f"/api/kernels/{kid}", headers=TOKEN)).status_code == 204
        assert_error(await client.get(f"/api/kernels/{kid}", headers=TOKEN), 404, "sandbox_not_found")
        assert (await client.get("/api/kernels", headers=TOKEN)).json() == []


async def test_kernel_env_from_the_client(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        kernel = (await client.post("/api/kernels", headers=TOKEN, json={
            "name": "python3", "env": {"KERNEL_USERNAME": "al", "KERNEL_WORKING_DIR": "/home/somewhere"}})).json()
        response = await client.post(f"/api/v1/sandboxes/{kernel['id']}/execute", headers=TOKEN, json={
            "code": "import os; (os.environ.get('KERNEL_USERNAME'), 'KERNEL_WORKING_DIR' in os.environ)"})
        assert response.json()["result"]["text/plain"] == "('al', False)"


async def test_bad_kernel_requests(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with gateway.client(None) as client:
        assert_error(await client.post("/api/kernels", json={"name": "julia"}, headers=TOKEN), 404, "not_found",
                     "no kernelspec named 'julia': the kernelspecs are bash, deno, ir, python3")
        # (an empty name is no name of a kernelspec either: only a missing one means the default)
        before = len((await client.get("/api/kernels", headers=TOKEN)).json())
        assert_error(await client.post("/api/kernels", json={"name": ""}, headers=TOKEN), 404, "not_found",
                     "no kernelspec named '': the kernelspecs are bash, deno, ir, python3")
        assert len((await client.get("/api/kernels", headers=TOKEN)).json()) == before
        assert_error(await client.post("/api/kernels", content=b"{", headers=TOKEN), 400, "invalid_json")
        assert_error(await client.post("/api/kernels", json={"env": {"A": 1}}, headers=TOKEN), 400, "invalid_request")
        assert_error(await client.post("/api/kernels", json={}), 401, "unauthorized")
        bob = {"Authorization": f"token {KEYS['bob']}"}
        assert_error(await client.get(f"/api/kernels/{kernel['id']}", headers=bob), 404, "sandbox_not_found")
        assert_error(await client.delete(f"/api/kernels/{kernel['id']}", headers=bob), 404, "sandbox_not_found")
        assert (await client.get("/api/kernels", headers=bob)).json() == []


async def test_a_bash_kernel_is_a_context_in_a_sandbox_of_its_own(gateway: InProcessGateway) -> None:
    async with gateway.client(None) as client:
        kernel = (await client.post("/api/kernels", json={"name": "bash"}, headers=TOKEN)).json()
        assert kernel["name"] == "bash" and kernel["execution_state"] == "idle"
        async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
            request = execute_request("echo hi $((6 * 7))")  # (bash syntax)
            await socket.send(json.dumps(request))
            got = await replies_to(socket, request["header"]["msg_id"])
        assert [m["content"]["text"] for m in got if m["msg_type"] == "stream"] == ["hi 42\n"]
        assert [k["id"] for k in (await client.get("/api/kernels", headers=TOKEN)).json()] == [kernel["id"]]
        assert (await client.delete(f"/api/kernels/{kernel['id']}", headers=TOKEN)).status_code == 204
        sandboxes = (await client.get("/api/v1/sandboxes", headers=TOKEN)).json()["sandboxes"]
        assert [(s["metadata"], s["status"]) for s in sandboxes] == [
            ({"started_by": "jupyter", "kernelspec": "bash"}, "terminated")]


async def test_channels_default_json_protocol(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        assert socket.subprotocol is None
        request = execute_request("from IPython.display import display\n"
                                  "display({'text/plain': 'é ✓'}, metadata={'k': [1, None]}, raw=True)\n"
                                  "x = 41\nprint('hello')\nx + 1")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    streams = [m["content"]["text"] for m in got if m["msg_type"] == "stream"]
    results = [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"]
    reply = next(m for m in got if m["msg_type"] == "execute_reply")
    assert streams == ["hello\n"] and results == ["42"]
    assert reply["content"]["status"] == "ok" and reply["channel"] == "shell"
    # Each message has the fields jupyter_server's own relay gives it (the gateway writes them itself).
    for m in got:
        assert set(m) == {"header", "msg_id", "msg_type", "parent_header", "metadata", "content", "buffers",
                          "channel"}, m
        assert m["msg_id"] == m["header"]["msg_id"] and m["msg_type"] == m["header"]["msg_type"]
        assert m["buffers"] == [] and m["parent_header"]["msg_id"] == request["header"]["msg_id"]
    display = next(m for m in got if m["msg_type"] == "display_data")
    assert display["content"]["data"] == {"text/plain": "é ✓"} and display["content"]["metadata"] == {"k": [1, None]}
    assert display["channel"] == "iopub"


async def test_channels_v1_protocol(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN,
                                  subprotocols=["v1.kernel.websocket.jupyter.org"]) as socket:
        assert socket.subprotocol == "v1.kernel.websocket.jupyter.org"
        request = execute_request("6 * 7")
        session = Session(key=b"")  # v1 frames carry no signature for the client to check
        parts = [json.dumps(request[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
        await socket.send(serialize_msg_to_ws_v1(parts, "shell"))

        def decode(frame: bytes) -> dict[str, Any]:
            channel, msg_list = deserialize_msg_from_ws_v1(frame)
            msg = session.deserialize([b"", *msg_list], content=True)
            msg["channel"] = channel
            return msg

        got = await replies_to(socket, request["header"]["msg_id"], decode)
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]


async def test_large_output_is_not_rate_limited(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN,
                                  max_size=None) as socket:
        request = execute_request("print('y' * 3_000_000)")
        await socket.send(json.dumps(request))
        got = await replies_to(socket, request["header"]["msg_id"])
    text = "".join(m["content"]["text"] for m in got if m["msg_type"] == "stream")
    assert text == "y" * 3_000_000 + "\n"


async def test_channels_refuse_strangers(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    with pytest.raises(websockets.InvalidStatus) as anonymous:
        async with websockets.connect(channels_url(gateway, kernel["id"])):
            pass
    assert anonymous.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as bob:
        async with websockets.connect(channels_url(gateway, kernel["id"]),
                                      additional_headers={"Authorization": f"token {KEYS['bob']}"}):
            pass
    assert bob.value.response.status_code == 404
    assert json.loads(bob.value.response.body)["error"]["code"] == "sandbox_not_found"


async def statuses_until(socket: Any, wanted: str, within: float = 10) -> list[str]:
    """The iopub execution states received until ``wanted`` (the test fails after ``within`` seconds)."""
    seen: list[str] = []
    async with asyncio.timeout(within):
        while wanted not in seen:
            msg = json.loads(await socket.recv())
            if msg["msg_type"] == "status":
                seen.append(msg["content"]["execution_state"])
    return seen


async def results_once_answered(socket: Any, code: str, within: float = 120, each: float = 10) -> list[str]:
    """Execute ``code`` until a reply comes (a restarted kernel answers once the socket reached it); its results.

    A request sent before the socket reached the new kernel is never answered: after ``each``
    seconds it is sent again (a late reply to an earlier one has another parent and is skipped).
    """
    async with asyncio.timeout(within):
        while True:
            request = execute_request(code)
            await socket.send(json.dumps(request))
            try:
                async with asyncio.timeout(each):
                    got = await replies_to(socket, request["header"]["msg_id"])
            except TimeoutError:
                continue
            results = [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"]
            if results:
                return results


async def state_once(client: Any, kernel_id: str, wanted: str, within: float = 60) -> dict[str, Any]:
    """The kernel model once its ``execution_state`` is ``wanted`` (the test fails after ``within`` seconds)."""
    async with asyncio.timeout(within):
        while (model := (await client.get(f"/api/kernels/{kernel_id}", headers=TOKEN)).json())["execution_state"] != wanted:
            await asyncio.sleep(0.05)
    return model


def held_restarts(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The gateway's kernel restarts held, once its own connection reached the fresh kernel, until the event is set.

    What a loaded machine does to them at random: a Jupyter socket reaches the fresh kernel (and
    is answered) before the gateway's restart is over.
    """
    release = asyncio.Event()
    opened = KernelConnection.open

    async def open_held(connection: KernelConnection, timeout: float) -> None:
        await opened(connection, timeout)
        await release.wait()

    monkeypatch.setattr(KernelConnection, "open", open_held)
    return release


async def test_a_dying_jupyter_kernel_says_restarting_and_comes_back(gateway: InProcessGateway,
                                                                     kernel: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As Jupyter Server does for its kernels: ``status: restarting`` on iopub at once, then a fresh kernel.

    The kernel model says ``restarting`` until the restart is over, also once a socket heard the
    fresh kernel (never ``idle`` beside a sandbox still ``failed``).
    """
    release = held_restarts(monkeypatch)
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket, \
            gateway.client(None) as client:
        await socket.send(json.dumps(execute_request("x = 1\nimport os\nos._exit(1)")))
        assert "restarting" in await statuses_until(socket, "restarting")
        # The same socket reaches the new kernel (its sockets are the old ones' addresses); state is gone.
        assert await results_once_answered(socket, "'x' in globals()") == ["False"]
        assert (await client.get(f"/api/kernels/{kernel['id']}", headers=TOKEN)).json()["execution_state"] == "restarting"
        release.set()
        await state_once(client, kernel["id"], "idle")
        sandbox = (await client.get(f"/api/v1/sandboxes/{kernel['id']}", headers=TOKEN)).json()
        assert sandbox["status"] == "running" and sandbox["status_reason"] is None


async def test_what_a_socket_sends_during_a_restart_waits_until_its_iopub_hears_the_fresh_kernel(
        gateway: InProcessGateway, kernel: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeroMQ reconnects each of a socket's kernel connections on its own: the request a client
    sends once told ``restarting`` (JupyterLab's next cell) reaches the fresh kernel as soon as it
    is up, but the socket's iopub subscription may reach it later, and what the kernel publishes
    meanwhile goes to no one: the cell would run without output, and wait for its idle for good.
    Here the socket's iopub reconnects 4 s after the death (what a loaded machine may do): its
    request, sent once, is held until that iopub hears the fresh kernel, and then answered whole.
    """
    km = gateway.app.sandboxes.kernel_of(kernel["id"])

    class SlowSubscriptions(type(km.context)):  # type: ignore[misc]
        def socket(self, socket_type: int, *args: Any, **kwargs: Any) -> Any:
            socket = super().socket(socket_type, *args, **kwargs)
            if socket_type == zmq.SUB:
                socket.setsockopt(zmq.RECONNECT_IVL, 4000)
            return socket

    monkeypatch.setattr(km, "context", SlowSubscriptions.shadow(km.context.underlying))
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        await socket.send(json.dumps(execute_request("x = 1\nimport os\nos._exit(1)")))
        assert "restarting" in await statuses_until(socket, "restarting")
        request = execute_request("'x' in globals()")
        await socket.send(json.dumps(request))
        got = await asyncio.wait_for(replies_to(socket, request["header"]["msg_id"]), 60)
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["False"]
    assert [m["content"]["execution_state"] for m in got if m["msg_type"] == "status"] == ["busy", "idle"]


async def test_input_after_a_restart_waits_until_the_socket_s_stdin_reached_the_fresh_kernel(
        gateway: InProcessGateway, kernel: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """As for iopub above, but stdin: here the socket's stdin reconnects 4 s after the death, its
    shell at once. The ``input()`` cell sent once told ``restarting`` is held until the stdin is
    up again (else the fresh kernel would ask no one, and the cell wait for good) — also when the
    stdin's monitor tells of the old connection's end only after the death was announced (here:
    never)."""
    km = gateway.app.sandboxes.kernel_of(kernel["id"])
    assert km is not None
    heard = Handshake._heard

    def handshakes_only(handshake: Handshake, frames: list[bytes]) -> None:
        if parse_monitor_message(frames)["event"] != zmq.EVENT_DISCONNECTED:
            heard(handshake, frames)

    monkeypatch.setattr(Handshake, "_heard", handshakes_only)
    create = km._create_connected_socket

    def slow_stdin(channel: str, identity: bytes | None = None) -> Any:
        socket = create(channel, identity=identity)
        if channel == "stdin":  # (a connection takes the options set before it is made)
            url = km._make_url(channel)
            socket.disconnect(url)
            socket.setsockopt(zmq.RECONNECT_IVL, 4000)
            socket.connect(url)
        return socket

    monkeypatch.setattr(km, "_create_connected_socket", slow_stdin)
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        await socket.send(json.dumps(execute_request("import os\nos._exit(1)")))
        assert "restarting" in await statuses_until(socket, "restarting")
        request = execute_request("print('hi', input('who? '))")
        request["content"]["allow_stdin"] = True
        await socket.send(json.dumps(request))
        await answer_input(socket, "carol", within=60)
        got = await replies_to(socket, request["header"]["msg_id"])
    assert [m["content"]["text"] for m in got if m["msg_type"] == "stream"] == ["hi carol\n"]


async def test_a_jupyter_kernel_that_dies_before_its_restart_is_over_is_restarted_again(
        gateway: InProcessGateway, kernel: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that reached the fresh kernel first may kill it again: another death in the row, as
    for Jupyter's restarter (not a failed restart, the kernel left dead)."""
    release = held_restarts(monkeypatch)
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket, \
            gateway.client(None) as client:
        await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
        assert "restarting" in await statuses_until(socket, "restarting")
        assert await results_once_answered(socket, "1 + 1") == ["2"]  # (the restart is held: not over)
        await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
        assert "dead" not in await statuses_until(socket, "restarting")
        release.set()
        assert await results_once_answered(socket, "6 * 7") == ["42"]
        await state_once(client, kernel["id"], "idle")
        sandbox = (await client.get(f"/api/v1/sandboxes/{kernel['id']}", headers=TOKEN)).json()
        assert sandbox["status"] == "running" and sandbox["status_reason"] is None


async def test_work_that_comes_the_moment_a_jupyter_kernel_died_waits_for_its_restart(
        gateway: InProcessGateway, kernel: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Jupyter kernel that died is restarted by a task of its own, which holds the sandbox's
    lifecycle lock only once it runs: an execution asked for between the death and then (half a
    second here, a moment on a busy machine) waits for the restart, as one asked for during it
    does, and runs in the fresh kernel — not a 409 telling its caller to restart a kernel that
    the gateway is restarting."""
    manager = gateway.app.sandboxes
    restart = type(manager)._restart_after_death

    async def late(self: Any, sandbox: Any, runtime: Any) -> None:
        await asyncio.sleep(0.5)
        await restart(self, sandbox, runtime)

    monkeypatch.setattr(type(manager), "_restart_after_death", late)
    execute = f"/api/v1/sandboxes/{kernel['id']}/execute"
    async with gateway.client(None) as client:
        died = await client.post(execute, json={"code": "x = 1\nimport os; os._exit(1)"}, headers=TOKEN)
        assert died.status_code == 200 and died.json()["status"] == "failed", died.text
        async with asyncio.timeout(10):  # the death is known (the restart's task not yet running)
            while (await client.get(f"/api/v1/sandboxes/{kernel['id']}", headers=TOKEN)).json()["status"] != "failed":
                await asyncio.sleep(0.02)
        answered = await client.post(execute, json={"code": "'x' in globals()"}, headers=TOKEN)
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "completed"
        assert answered.json()["outputs"][0]["data"]["text/plain"] == "False"  # the fresh kernel's
        assert (await client.get(f"/api/v1/sandboxes/{kernel['id']}", headers=TOKEN)).json()["status"] == "running"


async def test_a_dying_sandbox_kernel_says_dead(gateway: InProcessGateway, sandbox: dict[str, Any]) -> None:
    """A sandbox of our own API stays failed (its owner restarts it), and Jupyter clients are told at once."""
    async with websockets.connect(channels_url(gateway, sandbox["id"]), additional_headers=TOKEN) as socket:
        await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
        assert "restarting" not in await statuses_until(socket, "dead")
    async with gateway.client(None) as client:
        assert (await client.get(f"/api/kernels/{sandbox['id']}", headers=TOKEN)).json()["execution_state"] == "dead"
        failed = (await client.get(f"/api/v1/sandboxes/{sandbox['id']}", headers=TOKEN)).json()
        assert failed["status"] == "failed" and failed["status_reason"] == "kernel_died"
    await refused_as_dead(gateway, sandbox["id"])


async def test_a_dying_context_kernel_says_dead_until_restarted(gateway: InProcessGateway,
                                                               sandbox: dict[str, Any]) -> None:
    async with gateway.client(None) as client:
        context = (await client.post(f"/api/v1/sandboxes/{sandbox['id']}/contexts", json={}, headers=TOKEN)).json()
        async with websockets.connect(channels_url(gateway, context["id"]), additional_headers=TOKEN) as socket:
            await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
            assert "restarting" not in await statuses_until(socket, "dead")
        assert (await client.get(f"/api/kernels/{context['id']}", headers=TOKEN)).json()["execution_state"] == "dead"
        await refused_as_dead(gateway, context["id"])
        restarted = await client.post(f"/api/kernels/{context['id']}/restart", json={}, headers=TOKEN)
        assert restarted.status_code == 200 and restarted.json()["execution_state"] != "dead", restarted.text
        async with websockets.connect(channels_url(gateway, context["id"]), additional_headers=TOKEN) as socket:
            assert await results_once_answered(socket, "6 * 7") == ["42"]
        # The sandbox's own kernel never noticed.
        assert (await client.get(f"/api/v1/sandboxes/{sandbox['id']}", headers=TOKEN)).json()["status"] == "running"


async def refused_as_dead(gateway: InProcessGateway, kernel_id: str) -> None:
    """A socket to a dead kernel is refused at once: 409 (jupyter_server waits 60 s, then answers 500)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(channels_url(gateway, kernel_id), additional_headers=TOKEN, open_timeout=30):
            pass
    assert refused.value.response.status_code == 409
    error = json.loads(refused.value.response.body)["error"]
    assert error["code"] == "sandbox_not_running" and "dead" in error["message"]


async def test_input_goes_through_stdin(gateway: InProcessGateway, kernel: dict[str, Any]) -> None:
    """``input()``: the kernel asks on stdin the socket that sent the execute_request (they share an identity)."""
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        request = execute_request("name = input('who? ')\nprint('hi', name)")
        request["content"]["allow_stdin"] = True
        await socket.send(json.dumps(request))
        asked = await answer_input(socket, "alice")
        assert asked["channel"] == "stdin" and asked["content"]["prompt"] == "who? "
        got = await replies_to(socket, request["header"]["msg_id"])
    assert [m["content"]["text"] for m in got if m["msg_type"] == "stream"] == ["hi alice\n"]


async def test_input_reaches_a_socket_whose_stdin_connects_last(gateway: InProcessGateway, kernel: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel's stdin ROUTER drops an ``input_request`` for an identity whose connection has not
    finished its handshake: a socket whose shell reaches the kernel before its stdin (a loaded
    gateway accepts the four connections in any order) would send ``input()`` to no one and the
    cell would wait for good. The socket opens only once its stdin is connected."""
    km = gateway.app.sandboxes.kernel_of(kernel["id"])
    assert km is not None
    stdin_relay, = [relay for relay in km.sockets._relays if relay.name.endswith(f"-{km.stdin_port}")]
    connect = stdin_relay._connect
    delayed: list[float] = []

    async def connect_late(client: Any) -> None:
        delayed.append(asyncio.get_running_loop().time())
        await asyncio.sleep(1.5)  # (what the shell's request and the kernel's input() take, and more)
        await connect(client)

    monkeypatch.setattr(stdin_relay, "_connect", connect_late)
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        request = execute_request("name = input('who? ')\nprint('hi', name)")
        request["content"]["allow_stdin"] = True
        await socket.send(json.dumps(request))
        await answer_input(socket, "bob")
        got = await replies_to(socket, request["header"]["msg_id"])
    assert delayed, "the stdin connection did not pass the delayed relay"
    assert [m["content"]["text"] for m in got if m["msg_type"] == "stream"] == ["hi bob\n"]


async def test_a_newer_socket_of_a_session_replaces_one_still_in_its_handshake(gateway: InProcessGateway,
                                                                               kernel: dict[str, Any]) -> None:
    """What ``jupyter lab --gateway-url`` does when it opens a notebook, and when it reconnects to a
    restarted kernel: a second socket of one session while the first waits for the kernel. Only
    the newer may live (with the old code both did, sharing one ZMQ identity, and the kernel
    answered only one of them: JupyterLab's kernel stayed "Unknown")."""
    from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

    km = gateway.app.sandboxes.kernel_of(kernel["id"])
    assert km is not None
    held, release = asyncio.Event(), asyncio.Event()
    start_kernel = km.start_kernel

    async def start_when_released(**kwargs: Any) -> Any:
        held.set()
        await release.wait()
        return await start_kernel(**kwargs)

    km.start_kernel = start_when_released  # type: ignore[method-assign]  # the old kernel is gone, the new one waits
    session = str(uuid.uuid4())
    url = gateway.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?session_id={session}"
    key = f"{kernel['id']}:{session}"
    open_sessions = ZMQChannelsWebsocketConnection._open_sessions

    async def registered(but_not: Any = None) -> Any:
        async with asyncio.timeout(30):
            while open_sessions.get(key) in (None, but_not):
                await asyncio.sleep(0.01)
        return open_sessions[key]

    async with gateway.client(None) as client:
        restart = asyncio.ensure_future(client.post(f"/api/kernels/{kernel['id']}/restart", headers=TOKEN))
        await asyncio.wait_for(held.wait(), 60)
        older = asyncio.ensure_future(websockets.connect(url, additional_headers=TOKEN))
        first = await registered()
        newer = asyncio.ensure_future(websockets.connect(url, additional_headers=TOKEN))
        await registered(but_not=first)
        release.set()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await asyncio.wait_for(older, 60)
        assert_error_response = refused.value.response
        assert assert_error_response.status_code == 409
        assert json.loads(assert_error_response.body)["error"]["code"] == "session_replaced"
        async with await asyncio.wait_for(newer, 60) as socket:
            request = execute_request("6 * 7")
            await socket.send(json.dumps(request))
            got = await replies_to(socket, request["header"]["msg_id"])
        assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["42"]
        assert (await restart).status_code == 200


async def kill_once_heard(client: Any, socket: Any, kernel_id: str, wanted: str, each: float = 10) -> list[str]:
    """Send ``os._exit(1)`` until the kernel dies; the iopub execution states until ``wanted``.

    A request sent before the socket reached a restarted kernel is never answered: if nothing
    was heard after ``each`` seconds and the kernel still idles, it is sent again (never while
    the kernel is dying or restarting: a second death would count as another restart).
    """
    async with asyncio.timeout(90):
        while True:
            await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
            try:
                return await statuses_until(socket, wanted, within=each)
            except TimeoutError:
                if (await client.get(f"/api/kernels/{kernel_id}")).json()["execution_state"] != "idle":
                    return await statuses_until(socket, wanted, within=60)


async def test_a_kernel_that_keeps_dying_is_left_dead_after_the_restart_limit(tmp_path: Any) -> None:
    """As Jupyter Server's restarter: ``jupyter_restart_limit`` restarts in a row, then ``status: dead``."""
    async with InProcessGateway(tmp_path / "data", "--SandboxManager.jupyter_restart_limit=2") as gateway, \
            gateway.client("alice") as client:
        kernel = (await client.post("/api/kernels", json={"name": "python3"})).json()
        async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
            for death in range(3):  # each right after the restarted kernel answers: one row
                await state_once(client, kernel["id"], "idle")  # (the restart is over: a death now is the next)
                states = await kill_once_heard(client, socket, kernel["id"], "restarting" if death < 2 else "dead")
                assert ("dead" in states) == (death == 2), (death, states)
        model = (await client.get(f"/api/kernels/{kernel['id']}")).json()
        assert model["execution_state"] == "dead"
        sandbox = (await client.get(f"/api/v1/sandboxes/{kernel['id']}")).json()
        assert sandbox["status"] == "failed" and sandbox["status_reason"] == "kernel_died"
        await refused_as_dead(gateway, kernel["id"])
        # Its owner's restart gives a fresh kernel, and a new row of automatic restarts.
        assert (await client.post(f"/api/kernels/{kernel['id']}/restart")).json()["execution_state"] == "idle"
        async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
            await socket.send(json.dumps(execute_request("import os; os._exit(1)")))
            assert "restarting" in await statuses_until(socket, "restarting", within=30)


async def test_a_new_socket_hears_the_kernel_from_its_first_broadcast(gateway: InProcessGateway,
                                                                      kernel: dict[str, Any]) -> None:
    """While a new socket waits for its iopub subscription, the gateway asks the kernel for
    kernel_info (as jupyter_server does); what the kernel broadcasts meanwhile is relayed, the
    first message too (jupyter_server drops it: after a restart, the kernel's ``status: starting``).

    (The first heard may also be the idle of jupyter_server's own kernel_info, asked just before
    the socket opened, when the subscription was quicker than the kernel: then nothing follows.)
    """
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        async with asyncio.timeout(30):
            first = json.loads(await socket.recv())
            last = first
            while last["msg_type"] != "status" or last["content"]["execution_state"] != "idle":
                last = json.loads(await socket.recv())
    assert first["channel"] == "iopub" and first["msg_type"] == "status"
    assert first["content"]["execution_state"] in ("busy", "idle")
    assert first["parent_header"]["msg_type"] == "kernel_info_request"
    assert last["parent_header"]["msg_id"] == first["parent_header"]["msg_id"]  # busy, then idle: both relayed


async def test_a_new_socket_hears_the_kernel_even_when_its_state_looks_busy(gateway: InProcessGateway,
                                                                           kernel: dict[str, Any]) -> None:
    """A kernel recorded as busy is not asked at once (the request would queue behind its execution),
    but a stale "busy" (the idle of jupyter_server's own kernel_info still on its way) must not leave
    the new socket unsubscribed: the asking resumes as soon as the kernel is seen idle."""
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        await asyncio.wait_for(socket.recv(), 30)  # (jupyter_server's kernel_info is done once, now)
    km = gateway.app.sandboxes.kernel_of(kernel["id"])

    async def stale_busy() -> None:  # the kernel is idle; its state says busy for 1.5 s whatever it reports
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.5
        while loop.time() < until:
            km.execution_state = "busy"
            await asyncio.sleep(0.002)
        km.execution_state = "idle"

    staling = asyncio.create_task(stale_busy())
    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN) as socket:
        async with asyncio.timeout(20):
            first = json.loads(await socket.recv())
    await staling
    assert first["channel"] == "iopub" and first["msg_type"] == "status"
    assert first["parent_header"]["msg_type"] == "kernel_info_request"


SWALLOWS_AN_INTERRUPT = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('caught')\ntime.sleep(60)"


@pytest.mark.parametrize(("code", "stdout"), [("import time; time.sleep(60)", ""), (SWALLOWS_AN_INTERRUPT, "caught\n")],
                         ids=["plain", "caught-once"])
async def test_an_interrupt_sent_before_the_kernel_started_the_execution_stops_it_once_started(
        gateway: InProcessGateway, kernel: dict[str, Any], tmp_path: Path, code: str, stdout: str) -> None:
    """An execution waits in the kernel's queue while a Jupyter client's cell runs; interrupting it
    then is held until the kernel starts it (a SIGINT at once would stop the other cell, and ipykernel
    ignores SIGINT between requests: the execution would run on to its end). The other cell ends only
    once the interrupt was asked for, so it is held whatever the machine's speed. A held interrupt is
    sent again while the code runs on without an error (one landing before the code ran is lost):
    code that swallows the first is stopped by the next."""
    sid = kernel["id"]
    go = tmp_path / "go"
    async with websockets.connect(channels_url(gateway, sid), additional_headers=TOKEN) as socket, \
            gateway.client("alice") as alice:
        other = execute_request(f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n'slept'")
        await socket.send(json.dumps(other))
        async with asyncio.timeout(30):
            while (msg := json.loads(await socket.recv()))["msg_type"] != "execute_input":
                pass
        ours = asyncio.create_task(alice.post(f"/api/v1/sandboxes/{sid}/execute",
                                              json={"code": code, "timeout": 120}))
        async with asyncio.timeout(30):
            while [e["status"] for e in (await alice.get(f"/api/v1/sandboxes/{sid}/executions")).json()["executions"]] \
                    != ["running"]:
                await asyncio.sleep(0.02)
        assert (await alice.post(f"/api/v1/sandboxes/{sid}/interrupt")).status_code == 200
        go.touch()
        got = await replies_to(socket, other["header"]["msg_id"])
        execution = (await asyncio.wait_for(ours, 60)).json()
    assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["'slept'"]
    assert execution["status"] == "cancelled", execution
    assert execution["error"]["ename"] == "KeyboardInterrupt"
    # (the first interrupt may land before the code's try, in the kernel's own handling: that
    # stops it too, as a KeyboardInterrupt, with nothing printed)
    assert execution["stdout"] in {"", stdout}


FIGURE_AS_VALUE = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 1))\nax.plot([1, 0])\nfig"


@pytest.mark.parametrize("subprotocol", [None, "v1.kernel.websocket.jupyter.org"])
async def test_a_figure_as_a_cells_value_is_shown_as_a_stock_kernel_shows_it(
        gateway: InProcessGateway, kernel: dict[str, Any], subprotocol: str | None) -> None:
    """Jupyter clients get what a local kernel sends: the value, then the figure again at the cell's end."""
    session = Session(key=b"")
    request = execute_request(FIGURE_AS_VALUE)

    def decode(frame: Any) -> dict[str, Any]:
        if subprotocol is None:
            return json.loads(frame)  # type: ignore[no-any-return]
        channel, msg_list = deserialize_msg_from_ws_v1(frame)
        return {**session.deserialize([b"", *msg_list], content=True), "channel": channel}

    async with websockets.connect(channels_url(gateway, kernel["id"]), additional_headers=TOKEN, max_size=None,
                                  subprotocols=[subprotocol] if subprotocol else None) as socket:
        if subprotocol is None:
            await socket.send(json.dumps(request))
        else:
            parts = [json.dumps(request[k]).encode() for k in ("header", "parent_header", "metadata", "content")]
            await socket.send(serialize_msg_to_ws_v1(parts, "shell"))
        got = await replies_to(socket, request["header"]["msg_id"], decode)
    shown = [m["msg_type"] for m in got if m["msg_type"] in ("execute_result", "display_data")]
    assert shown == ["execute_result", "display_data"]
    assert all("image/png" in m["content"]["data"] for m in got if m["msg_type"] in shown)
    # Our own API shows it once (the value).
    async with gateway.client("alice") as alice:
        execution = (await alice.post(f"/api/v1/sandboxes/{kernel['id']}/execute", json={"code": FIGURE_AS_VALUE})).json()
    assert [o["output_type"] for o in execution["outputs"]] == ["execute_result"]
