"""API keys never reach the gateway's log, even at debug level and on error paths.

Browsers pass the key as ``?token=KEY`` on WebSockets; every request is logged with its URI.
The attack: send the key in the query string every way a client might (WebSockets that open, that
are refused, REST requests that fail) and search the whole log of a real gateway for it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import websockets

from gateway.api.base import scrub_uri
from tests.conftest import docker_or_fail
from tests.gateways import KEYS, GatewayProcess, create

pytestmark = pytest.mark.docker


def test_scrub_uri() -> None:
    assert scrub_uri("/a/b?token=s3cret&session_id=1") == "/a/b?token=[secret]&session_id=1"
    assert scrub_uri("/a?x=1&TOKEN=s&api_key=t&Key=u") == "/a?x=1&TOKEN=[secret]&api_key=[secret]&Key=[secret]"
    assert scrub_uri("/a?to%6Ben=s") == "/a?to%6Ben=[secret]"
    assert scrub_uri("/a?token") == "/a?token"
    assert scrub_uri("/plain") == "/plain"


async def test_a_key_in_the_query_string_never_appears_in_the_log(tmp_path: Any) -> None:
    docker_or_fail().close()
    key = KEYS["alice"]
    gateway = await GatewayProcess(tmp_path / "data", "--log-level=DEBUG", provisioner="docker").start()
    try:
        ws = gateway.url.replace("http", "ws")
        async with gateway.client("alice") as alice:
            sandbox = await create(alice)
            kernel = (await alice.post("/api/kernels", json={})).json()
        async with websockets.connect(f"{ws}/api/v1/sandboxes/{sandbox['id']}/stream?token={key}") as socket:
            await socket.send(json.dumps({"type": "execute", "code": "1"}))
            while json.loads(await socket.recv())["type"] != "execution":
                pass
        channels = f"{ws}/api/kernels/{kernel['id']}/channels?session_id={uuid.uuid4()}&token={key}"
        async with websockets.connect(channels):
            pass
        for url in (f"{ws}/api/v1/sandboxes/{sandbox['id']}/stream?token={key}", channels):
            with pytest.raises(websockets.InvalidStatus):  # a foreign origin: refused and logged
                async with websockets.connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                    pass
        async with gateway.client(None) as anonymous:
            for method, path in [("GET", f"/api/v1/sandboxes?token={key}"), ("GET", f"/nowhere?TOKEN={key}"),
                                 ("PUT", f"/api/v1/sandboxes?api_key={key}"),
                                 ("GET", f"/api/v1/sandboxes/{sandbox['id']}/stream?token={key}"),
                                 ("GET", f"/api/kernels?token={key}")]:
                assert (await anonymous.request(method, path)).status_code >= 400
    finally:
        await gateway.stop()
    log = "".join(gateway.output)
    assert "[secret]" in log, log[-3000:]  # the requests were logged, with the key scrubbed
    assert key not in log
