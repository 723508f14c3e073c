"""``/mcp``: the MCP SDK's streamable HTTP transport, served by Tornado for keys of this gateway.

The SDK speaks ASGI; ``McpHandler`` authenticates the request with the gateway's keys (a JSON
401 otherwise; browsers get CORS as on every API route), then hands it over as one ASGI request: the body in, the status, headers and
body chunks (SSE streams flushed as they come) out, and ``http.disconnect`` when the client goes.
The SDK binds each session to the user that opened it (another key gets 404 for it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.types import Message
from tornado.iostream import StreamClosedError

from gateway.api.base import APIHandler
from gateway.errors import Unauthorized
from gateway.mcp.server import SESSION_HEADER, McpService


class McpHandler(APIHandler):
    def initialize(self, mcp: McpService, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.mcp = mcp
        self.disconnected = asyncio.Event()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info", (None, None))[1], Unauthorized):
            self.set_header("WWW-Authenticate", 'Bearer realm="code-gateway"')  # what MCP clients look for
        super().write_error(status_code, **kwargs)

    async def get(self) -> None:
        await self.bridge()

    async def post(self) -> None:
        await self.bridge()

    async def delete(self) -> None:
        await self.bridge()
        session = self.request.headers.get(SESSION_HEADER)
        if session and self.get_status() < 300:
            self.mcp.sessions.end_soon(session)  # the client ended its session

    def on_connection_close(self) -> None:
        self.disconnected.set()

    def scope(self) -> dict[str, Any]:
        request = self.request
        user = str(self.current_user)
        host, _, port = request.host.partition(":")
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": request.protocol, "path": request.path,
            "raw_path": request.path.encode(), "query_string": request.query.encode(), "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.get_all()],
            "client": (request.remote_ip, 0), "server": (host, int(port or 0)), "state": {},
            # Sessions are bound to this principal by the SDK; the tools read the user from it.
            "user": AuthenticatedUser(AccessToken(token="", client_id=user, scopes=[])),
        }

    async def bridge(self) -> None:
        session = self.request.headers.get(SESSION_HEADER)
        user = str(self.current_user)
        counted = session if self.request.method != "DELETE" else None
        if counted:
            self.mcp.sessions.seen(counted, user, busy=1)
        body_given = False

        async def receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": self.request.body or b"", "more_body": False}
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.set_status(message["status"])
                self.clear_header("Content-Type")
                for name, value in message.get("headers", []):
                    self.add_header(name.decode("latin-1"), value.decode("latin-1"))
                return
            if message["type"] != "http.response.body" or self._finished:
                return
            if message.get("body"):
                self.write(message["body"])
            try:
                if message.get("more_body"):
                    await self.flush()  # an SSE event: out now
                else:
                    self.finish()
            except StreamClosedError:
                self.disconnected.set()

        try:
            await self.mcp.handle(self.scope(), receive, send)
        finally:
            if counted:
                self.mcp.sessions.seen(counted, user, busy=-1)
        if not self._finished:
            self.finish()
        opened = self._headers.get(SESSION_HEADER)
        if opened and not session and self.get_status() < 300:
            self.mcp.sessions.seen(opened, user)  # a new session
