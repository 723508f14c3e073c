"""Live streams of an execution: NDJSON and Server-Sent Events over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from gateway.api.streams import JSON, NDJSON, SSE, negotiate
from gateway.errors import NotAcceptable
from tests.api.test_errors import assert_error
from tests.gateways import InProcessGateway
from tests.waiting import hold, release, wait_finished

LIVE_CODE = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)\n"


async def ndjson_events(client: httpx.AsyncClient, sandbox_id: str, body: dict[str, Any]) -> list[tuple[float, dict]]:
    events = []
    async with client.stream("POST", f"/api/v1/sandboxes/{sandbox_id}/execute", json=body,
                             headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        async for line in response.aiter_lines():
            if line:
                events.append((time.monotonic(), json.loads(line)))
    return events


async def test_ndjson_streams_outputs_live_then_the_execution(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    events = await ndjson_events(alice, sandbox["id"], {"code": LIVE_CODE})
    outputs = [e for _, e in events if e["type"] == "output"]
    assert [o["output"]["text"] for o in outputs] == ["0\n", "1\n", "2\n"]
    last_at, last = events[-1]
    assert last["type"] == "execution"
    assert last["execution"]["status"] == "completed"
    assert last["execution"]["stdout"] == "0\n1\n2\n"
    first_at = next(at for at, e in events if e["type"] == "output")
    # The first line arrived while the code was still running, a second or more before the end.
    assert last_at - first_at >= 1.0
    assert {e["execution_id"] for _, e in events} == {last["execution"]["id"]}


async def test_server_sent_events(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute",
                            json={"code": "print('a'); 1 + 1"}, headers={"Accept": "text/event-stream"}) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        text = (await response.aread()).decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    parsed = [(b.split("\n")[0], json.loads(b.split("\n")[1][len("data: "):])) for b in blocks]
    assert [name for name, _ in parsed] == ["event: output", "event: output", "event: execution"]
    assert parsed[0][1]["output"]["text"] == "a\n"
    assert parsed[1][1]["output"]["output_type"] == "execute_result"
    assert parsed[2][1]["execution"]["result"] == {"text/plain": "2"}


async def test_keepalive_while_silent(tmp_path: Any) -> None:
    keepalive = {"application/x-ndjson": '{"type": "keepalive"}', "text/event-stream": ": keepalive"}
    async with InProcessGateway(tmp_path / "data", "--keepalive=0.2") as gateway, gateway.client() as alice:
        sid = (await alice.post("/api/v1/sandboxes")).json()["id"]
        for n, (accept, line_of_keepalive) in enumerate(keepalive.items()):
            lines = []
            async with alice.stream("POST", f"/api/v1/sandboxes/{sid}/execute", json={"code": hold(f"go{n}") + "'end'"},
                                    headers={"Accept": accept}) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if lines.count(line_of_keepalive) == 3 and line == line_of_keepalive:
                        await release(alice, sid, f"go{n}")  # three keepalives while the code ran silently: let it end
            assert lines.count(line_of_keepalive) >= 3, lines
            if accept == "text/event-stream":  # a comment, which EventSource ignores, not an event
                assert "event: keepalive" not in lines
                assert lines[-3] == "event: execution"
            last = json.loads(lines[-2].removeprefix("data: ") if accept == "text/event-stream" else lines[-1])
            assert last["type"] == "execution" and last["execution"]["result"] == {"text/plain": "'end'"}


DISPLAY_CODE = (
    "from IPython.display import display, update_display, clear_output\n"
    "display('step 0', display_id='progress')\n"
    "update_display('step 1', display_id='progress')\n"
    "print('x')\n"
    "clear_output()\n"
    "print('y')\n"
    "clear_output(wait=True)\n"
    "print('z')\n"
)


def assert_display_events(events: list[dict[str, Any]]) -> None:
    """The live events of DISPLAY_CODE: each display change as it happens, then the execution as stored."""
    shown = [(e["type"], e.get("display_id"), e.get("output", {}).get("data", {}).get("text/plain"),
              e.get("output", {}).get("text"), e.get("wait")) for e in events[:-1]]
    assert shown == [
        ("output", "progress", "'step 0'", None, None),
        ("update_display", "progress", "'step 1'", None, None),  # the display_id names the output it replaces
        ("output", None, None, "x\n", None),
        ("clear_output", None, None, None, False),
        ("output", None, None, "y\n", None),
        ("clear_output", None, None, None, True),  # wait=True: sent when the next output comes
        ("output", None, None, "z\n", None),
    ]
    assert events[-1]["type"] == "execution"
    assert events[-1]["execution"]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "z\n"}]


async def test_display_updates_and_clears_are_streamed_live(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    events = await ndjson_events(alice, sandbox["id"], {"code": DISPLAY_CODE})
    assert_display_events([e for _, e in events])


async def test_stream_errors_are_plain_json_before_streaming(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    response = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": 1},
                                headers={"Accept": "application/x-ndjson"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("accept, chosen", [
    ("", JSON),
    ("*/*", JSON),
    ("application/x-ndjson", NDJSON),
    ("APPLICATION/X-NDJSON", NDJSON),
    ("application/json;q=0.1, application/x-ndjson", NDJSON),         # the higher q, wherever it is listed
    ("application/x-ndjson;q=0.9, text/event-stream", SSE),
    ("application/json;q=0, */*", NDJSON),                             # q=0: not acceptable; */* takes the rest
    ("*/*;q=0.1, application/json;q=0", NDJSON),
    ("text/event-stream, application/x-ndjson", SSE),                  # equal q: the one listed first
    ("application/x-ndjson;q=0.5, text/event-stream;q=0.5", NDJSON),
    ("application/*", JSON),                                           # equal q and place: the first offered
    ("text/*;q=0.5, application/json;q=0.4", SSE),
    ("application/*;q=0.2, application/x-ndjson;q=0.8, */*;q=0.5", NDJSON),  # the most specific range decides
    ("application/x-ndjson;q=0.1, application/*;q=0.9", JSON),
    ("application/json; charset=utf-8", JSON),                         # (other parameters are not compared)
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),   # a browser's
    ("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2", JSON),   # Java's: "*" and ".2" read leniently
    ("application/x-ndjson;q=2, application/json;q=0.5", JSON),       # a q that is no qvalue: that range is left out
    ("nonsense, application/x-ndjson", NDJSON),
    ("application/json;q=1.000, text/event-stream;q=0.999", JSON),
])
def test_negotiate_weighs_the_accept_header_as_rfc_9110_says(accept: str, chosen: str) -> None:
    assert negotiate(accept) == chosen


@pytest.mark.parametrize("accept", ["text/html", "application/x-ndjson;q=0", "application/*;q=0, text/*;q=0",
                                    "*/*;q=0", "application/json;q=0, application/x-ndjson;q=0, text/event-stream;q=0"])
def test_negotiate_refuses_a_header_that_accepts_nothing_offered(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="application/json, application/x-ndjson, text/event-stream"):
        negotiate(accept)


def test_negotiate_among_what_an_endpoint_offers() -> None:
    assert negotiate("application/json, text/event-stream", (NDJSON, SSE)) == SSE
    assert negotiate("*/*", (NDJSON, SSE)) == NDJSON
    with pytest.raises(NotAcceptable):
        negotiate("application/json", (NDJSON, SSE))


async def test_accept_q_values_over_http(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    execute = f"/api/v1/sandboxes/{sandbox['id']}/execute"
    response = await alice.post(execute, json={"code": "print('a'); 1 + 1"},
                                headers={"Accept": "application/json;q=0.1, application/x-ndjson"})
    assert response.status_code == 200 and response.headers["Content-Type"] == NDJSON
    events = [json.loads(line) for line in response.text.splitlines() if line]
    assert [e["type"] for e in events] == ["output", "output", "execution"]
    plain = await alice.post(execute, json={"code": "2"}, headers={"Accept": "text/event-stream;q=0.2, application/*"})
    assert plain.headers["Content-Type"].startswith(JSON) and plain.json()["result"] == {"text/plain": "2"}
    refused = await alice.post(execute, json={"code": "3"}, headers={"Accept": "application/json;q=0, text/html"})
    assert_error(refused, 406, "not_acceptable", "application/x-ndjson")
    # Refused before anything ran or was stored.
    executions = (await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/executions")).json()["executions"]
    assert [e["code"] for e in executions] == ["print('a'); 1 + 1", "2"]
    # Re-attaching offers the two streams (JSON by name is NDJSON there).
    events_url = f"/api/v1/executions/{executions[0]['id']}/events"
    sse = await alice.get(events_url, headers={"Accept": "application/x-ndjson;q=0.5, text/event-stream"})
    assert sse.headers["Content-Type"] == SSE and sse.text.startswith("event: execution\n")
    ndjson = await alice.get(events_url, headers={"Accept": "application/json"})
    assert ndjson.headers["Content-Type"] == NDJSON
    assert_error(await alice.get(events_url, headers={"Accept": "text/html"}), 406, "not_acceptable")


async def test_disconnect_mid_stream_loses_nothing(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": LIVE_CODE + "'end'"},
                            headers={"Accept": "application/x-ndjson"}) as response:
        execution_id = response.headers["X-Execution-Id"]
        assert response.headers["Location"] == f"/api/v1/executions/{execution_id}"
        async for line in response.aiter_lines():
            assert json.loads(line)["output"]["text"] == "0\n"
            break  # and hang up
    execution = await wait_finished(alice, execution_id)
    assert execution["status"] == "completed"
    assert execution["stdout"] == "0\n1\n2\n"
    assert execution["result"]["text/plain"] == "'end'"


async def test_interrupt_on_disconnect(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    body = {"code": "import time\nprint('go', flush=True)\ntime.sleep(60)", "interrupt_on_disconnect": True}
    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", json=body,
                            headers={"Accept": "application/x-ndjson"}) as response:
        execution_id = response.headers["X-Execution-Id"]
        async for _ in response.aiter_lines():
            break
    execution = await wait_finished(alice, execution_id, timeout=30)
    assert execution["status"] == "cancelled"


async def test_a_slow_reader_does_not_stall_the_kernel(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    code = "for i in range(2000): print('x' * 200, flush=True)\n'done'"
    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": code},
                            headers={"Accept": "application/x-ndjson"}) as response:
        execution_id = response.headers["X-Execution-Id"]
        # Not reading: the execution still finishes and is stored while the stream waits.
        execution = await wait_finished(alice, execution_id)
        assert execution["status"] == "completed"
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert lines[-1]["type"] == "execution"
    text = "".join(e["output"].get("text", "") for e in lines if e["type"] == "output")
    assert text == ("x" * 200 + "\n") * 2000


WAIT_FOR_GO = ("import os, time\nprint('0', flush=True)\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"
               "print('1', flush=True)\nprint('2', flush=True)\n'end'")


async def test_reattach_to_a_live_execution_from_the_event_it_reached(
        alice: httpx.AsyncClient, bob: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": WAIT_FOR_GO},
                            headers={"Accept": "application/x-ndjson"}) as response:
        execution_id = response.headers["X-Execution-Id"]
        async for line in response.aiter_lines():
            assert json.loads(line)["output"]["text"] == "0\n"
            break  # the stream breaks after one event
    assert (await bob.get(f"/api/v1/executions/{execution_id}/events")).json()["error"]["code"] == "execution_not_found"
    bad = await alice.get(f"/api/v1/executions/{execution_id}/events?after=x")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    async with alice.stream("GET", f"/api/v1/executions/{execution_id}/events?after=1",
                            headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        # Still running: the stream is live, so what the code prints after this point arrives on it.
        assert (await alice.put(f"/api/v1/sandboxes/{sandbox['id']}/files/go", content=b"")).status_code == 201
        events = [json.loads(line) async for line in response.aiter_lines() if line]
    events = [e for e in events if e["type"] != "keepalive"]
    assert {e["execution_id"] for e in events} == {execution_id}
    assert "".join(e["output"].get("text", "") for e in events if e["type"] == "output") == "1\n2\n"
    assert events[-1]["type"] == "execution"
    assert events[-1]["execution"]["stdout"] == "0\n1\n2\n"


async def test_reattach_to_an_ended_execution_gives_the_final_event(alice: httpx.AsyncClient,
                                                                    sandbox: dict[str, Any]) -> None:
    done = (await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": "print(1); 2"})).json()
    response = await alice.get(f"/api/v1/executions/{done['id']}/events?after=7", headers={"Accept": "text/event-stream"})
    assert response.headers["Content-Type"] == "text/event-stream"
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert len(blocks) == 1 and blocks[0].startswith("event: execution\n")
    final = json.loads(blocks[0].split("\n")[1][len("data: "):])
    assert final["execution"]["id"] == done["id"] and final["execution"]["outputs"] == done["outputs"]


#: Outputs over ``gateway.api.streams.LARGE``, which leave in slices without being copied again:
#: a stream of three distinct 700 KiB chunks (one output, joined) and a 1.2 MB display whose
#: size is not a multiple of the slice, each byte checked.
LARGE_CODE = (
    "import sys\nfrom IPython.display import display\n"
    "for c in 'abc':\n    sys.stdout.write(c * (700 << 10) + '\\n'); sys.stdout.flush()\n"
    "display({'text/plain': ''.join(chr(48 + i % 75) for i in range(1_200_001))}, raw=True)\n"
    "'é' * 300_000"
)
LARGE_TEXT = "".join(c * (700 << 10) + "\n" for c in "abc")
LARGE_PLAIN = "".join(chr(48 + i % 75) for i in range(1_200_001))


def check_large(execution: dict[str, Any]) -> None:
    assert execution["status"] == "completed", execution["error"]
    assert execution["stdout"] == LARGE_TEXT
    assert [o["output_type"] for o in execution["outputs"]] == ["stream", "display_data", "execute_result"]
    assert execution["outputs"][1]["data"]["text/plain"] == LARGE_PLAIN
    assert execution["result"] == {"text/plain": repr("é" * 300_000)}


async def test_large_outputs_arrive_whole_by_every_http_method(alice: httpx.AsyncClient, sandbox: dict[str, Any]) -> None:
    response = await alice.post(f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": LARGE_CODE})
    assert int(response.headers["Content-Length"]) == len(response.content)  # (httpx also checks it)
    check_large(response.json())
    fetched = await alice.get(f"/api/v1/executions/{response.json()['id']}")
    assert fetched.json() == response.json()

    events = [e for _, e in await ndjson_events(alice, sandbox["id"], {"code": LARGE_CODE})]
    outputs = [e["output"] for e in events if e["type"] == "output"]
    assert "".join(o["text"] for o in outputs if o["output_type"] == "stream") == LARGE_TEXT
    assert [o["data"]["text/plain"] for o in outputs if o["output_type"] == "display_data"] == [LARGE_PLAIN]
    assert events[-1]["type"] == "execution"
    check_large(events[-1]["execution"])

    async with alice.stream("POST", f"/api/v1/sandboxes/{sandbox['id']}/execute", json={"code": LARGE_CODE},
                            headers={"Accept": "text/event-stream"}) as streamed:
        blocks = [b for b in (await streamed.aread()).decode().split("\n\n") if b.strip()]
    final = blocks[-1].split("\n")
    assert final[0] == "event: execution"
    check_large(json.loads(final[1].removeprefix("data: "))["execution"])
