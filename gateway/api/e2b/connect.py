"""Connect RPC served by Tornado: connectrpc's ASGI applications behind one handler.

    Rule(SandboxPort("/process[.]Process/[A-Za-z]+", ENVD_PORT), ConnectHandler, {"rpc": ProcessASGIApplication(...)})

connectrpc implements the protocol (unary and streaming framing, JSON and binary codecs,
compression, Connect errors, end-of-stream messages); its server runtime is ASGI, so this
handler is the ASGI server for it: the request as an ASGI scope, its body as one
``http.request`` event then ``http.disconnect`` once the client goes away (connectrpc stops a
server stream then), every ``http.response.body`` written and flushed (awaited: backpressure).
The sandbox the request is for (found and checked by ``SandboxTrafficHandler``) reaches the
service through ``current_sandbox``, a context variable set around the call.

The applications decode JSON messages with ``DepthBoundedJSON`` (``CODECS``): protobuf-py's JSON
parse crashes the whole interpreter (a segfault) on a message of 100,000 nested ``[``.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError
from protobuf import Message
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from gateway import jsonbytes
from gateway.api.e2b.traffic import PREFIX, SandboxTrafficHandler
from gateway.sandboxes.model import Sandbox

#: The sandbox the RPC being served is for.
current_sandbox: contextvars.ContextVar[Sandbox] = contextvars.ContextVar("current_sandbox")


class DepthBoundedJSON:
    """connectrpc's JSON codec, a message nested more than ``jsonbytes.MAX_DEPTH`` levels deep
    refused (``invalid_argument``) before protobuf-py parses it."""

    def __init__(self) -> None:
        self.codec: Codec[Message, Any] = proto_json_codec()

    def name(self) -> str:
        return self.codec.name()

    def encode(self, message: Message) -> bytes:
        return self.codec.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            jsonbytes.loads_bounded(data)
        except jsonbytes.TooDeep as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"the message is refused: {exc}") from None
        except ValueError:
            pass  # (not JSON: the codec's own parse says so, as it always did)
        return self.codec.decode(data, message_class)


#: The codecs of the envd services: protobuf's binary one, and JSON bounded in depth.
CODECS: list[Codec[Message, Any]] = [proto_binary_codec(), DepthBoundedJSON()]


class ConnectHandler(SandboxTrafficHandler):
    def initialize(self, rpc: Any, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.rpc = rpc  # (not ``application``: that is Tornado's)
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._body_sent = False

    async def post(self) -> None:
        await self._serve()

    async def get(self) -> None:
        await self._serve()

    async def _serve(self) -> None:
        request = self.request
        if isinstance(request.connection, HTTP1Connection):
            request.connection.stream.set_nodelay(True)  # each streamed message leaves at once
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": request.protocol, "root_path": "",
            "path": request.path.removeprefix(PREFIX), "raw_path": request.path.removeprefix(PREFIX).encode(),
            "query_string": request.query.encode(), "client": (request.remote_ip, 0), "server": None,
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in request.headers.get_all()],
            "extensions": {},
        }
        token = current_sandbox.set(self.sandbox)
        try:
            await self.rpc(scope, self._receive, self._send)
        except StreamClosedError:
            pass  # the client went away mid-stream
        finally:
            current_sandbox.reset(token)

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        await asyncio.shield(self._gone)
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.set_status(int(message["status"]))
            self.clear_header("Content-Type")
            self.clear_header("Cache-Control")
            for name, value in message.get("headers", []):
                self.add_header(name.decode("latin-1"), value.decode("latin-1"))
        elif kind == "http.response.body":
            if message.get("body"):
                self.write(message["body"])
            if message.get("more_body"):
                await self.flush()
            elif not self._finished:
                self.finish()

    def on_connection_close(self) -> None:
        if not self._gone.done():
            self._gone.set_result(None)

    def on_finish(self) -> None:
        self.on_connection_close()
