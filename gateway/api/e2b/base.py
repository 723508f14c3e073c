"""What the E2B handlers share: E2B's error shape, its API keys, and "not supported here".

E2B's control plane and envd answer errors as ``{"code": <HTTP status>, "message": "..."}``; the
SDKs read ``message`` and pick their exception by the status (401 ``AuthenticationException``,
404 ``NotFoundException``, ...). Our typed errors keep their status and message here, only the
shape changes. Anything the SDK can ask for that this gateway does not do is
``NotSupported`` (400, saying so), never a silent success.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tornado import web

from gateway.api.base import APIHandler, allowed_methods
from gateway.errors import GatewayError, Unauthorized

#: The form of an E2B API key (what ``code-gateway keys create USER --format e2b`` prints).
E2B_KEY = re.compile(r"e2b_[0-9a-f]{40}")
#: The envd version we answer to: the SDK turns features on and off by it (0.5.7: uploads as
#: application/octet-stream, gzip; no file metadata, no entry info in watch events).
ENVD_VERSION = "0.5.7"
#: What ``clientID`` says in E2B's sandbox records (E2B's name for the machine behind it).
CLIENT_ID = "code-gateway"


class NotSupported(GatewayError):
    """Something of E2B's that this gateway does not offer; the message says what."""

    status = 400
    code = "not_supported"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not supported by this gateway (Code Interpreter Gateway's E2B API)")


def e2b_error_body(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "message": message}


class E2BErrors:
    """Errors in E2B's shape. Mixed in ahead of ``APIHandler``, whose logging it keeps."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        handler: web.RequestHandler = self  # type: ignore[assignment]
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = "internal error (the gateway's log has the details)"
        if isinstance(exc, GatewayError):
            status_code, message = exc.status, exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.get_message() or handler._reason
        if status_code == 405:
            handler.set_header("Allow", ", ".join(allowed_methods(handler)))
        handler.set_status(status_code)
        handler.set_header("Content-Type", "application/json; charset=UTF-8")
        handler.finish(json.dumps(e2b_error_body(status_code, message)))


class E2BHandler(E2BErrors, APIHandler):
    """A control-plane handler: authenticated by ``X-API-Key`` with a key of E2B's form."""

    def request_token(self) -> str:
        return self.request.headers.get("X-API-Key", "").strip()

    async def prepare(self) -> None:
        key = self.request_token()
        if key and not E2B_KEY.fullmatch(key):
            raise Unauthorized("invalid API key format: an E2B API key is e2b_ followed by 40 hex digits "
                               "(make one with `code-gateway keys create USER --format e2b`)")
        await super().prepare()


class NotSupportedHandler(E2BHandler):
    """Every E2B path this gateway does not serve: 400 saying so (authenticated, as E2B's are)."""

    async def _refuse(self, *args: str) -> None:
        raise NotSupported(f"{self.request.method} {self.request.path.removeprefix('/e2b')}")

    get = post = put = patch = delete = _refuse

