"""What every API handler shares: authentication, JSON bodies, and the one JSON error shape.

    class SandboxHandler(APIHandler):
        def initialize(self, sandboxes: SandboxManager, **base) -> None:
            super().initialize(**base)
            self.sandboxes = sandboxes

Errors: domain code raises ``GatewayError`` subclasses; ``write_error`` turns them (and Tornado's
own ``HTTPError``, and anything unexpected) into ``{"error": {"code": ..., "message": ...}}`` with
the error's status. An unexpected exception is logged with its traceback and answered with a
bare 500: a response never carries a traceback of the gateway.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from jsonschema import Draft202012Validator
from tornado import web

from gateway.auth import KeyRing
from gateway.errors import GatewayError, InvalidJSON, InvalidRequest, NotFound, Unauthorized

log = logging.getLogger(__name__)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def bearer_token(handler: web.RequestHandler) -> str:
    """The API key of a request: ``Authorization: Bearer KEY`` (or ``token KEY``, as Jupyter clients send)."""
    scheme, _, credentials = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and credentials.strip():
        return credentials.strip()
    return ""


class JSONErrors:
    """Errors as the one JSON shape, expected ``GatewayError``s logged quietly. Mixed into every
    handler class (plain, WebSocket, jupyter_server's) ahead of its Tornado base."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code, kwargs.get("exc_info", (None, None, None))[1])  # type: ignore[arg-type]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not log_domain_error(self, value):  # type: ignore[arg-type]
            super().log_exception(typ, value, tb)  # type: ignore[misc]


class APIHandler(JSONErrors, web.RequestHandler):
    """A JSON API handler: authenticated unless ``auth_required`` is False."""

    auth_required = True

    def initialize(self, keyring: KeyRing, **_: Any) -> None:
        self.keyring = keyring

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def request_token(self) -> str:
        return bearer_token(self)

    async def prepare(self) -> None:
        if self.auth_required:
            self.current_user = await authenticate(self.keyring, self.request_token())

    @property
    def user(self) -> str:
        assert isinstance(self.current_user, str)
        return self.current_user

    # -- bodies ----------------------------------------------------------------------------------

    def json_body(self, validator: Draft202012Validator | None = None, *, allow_empty: bool = False) -> dict[str, Any]:
        """The request's JSON object, checked against ``validator`` (400 naming the bad field)."""
        if not self.request.body.strip():
            if allow_empty:
                return {}
            raise InvalidJSON("the request body must be a JSON object")
        try:
            body = json.loads(self.request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidJSON("the request body must be a JSON object")
        if validator is not None:
            problem = next(iter(sorted(validator.iter_errors(body), key=lambda e: list(e.path))), None)
            if problem is not None:
                raise InvalidRequest(describe(problem))
        return body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


async def authenticate(keyring: KeyRing, token: str) -> str:
    """The user a token belongs to, or ``Unauthorized``."""
    user = await keyring.authenticate(token) if token else None
    if user is None:
        raise Unauthorized("missing API key" if not token else "invalid API key")
    return user


def write_json_error(handler: web.RequestHandler, status_code: int, exc: BaseException | None) -> None:
    """Finish ``handler`` with the JSON error for ``exc`` (any handler class, WebSockets included)."""
    if isinstance(exc, GatewayError):
        handler.set_status(exc.status)
        body = error_body(exc.code, exc.message)
    elif isinstance(exc, web.HTTPError):
        body = error_body(_http_code(status_code), exc.log_message or _reason(status_code))
    else:
        body = error_body(_http_code(status_code), _reason(status_code))
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.finish(json.dumps(body))


def log_domain_error(handler: web.RequestHandler, exc: BaseException | None) -> bool:
    """Log an expected ``GatewayError`` quietly; False for anything else (log it with its traceback)."""
    if isinstance(exc, GatewayError):
        log.debug("%s %s -> %s %s", handler.request.method, handler.request.path, exc.status, exc.code)
        return True
    return False


def describe(error: Any) -> str:
    """A jsonschema error as one sentence naming the field."""
    field = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{'.'.join([field, e]) if field else e}" for e in extra)
        return f"unknown field: {names}"
    if error.validator == "required":
        return f"missing field: {error.message.split(chr(39))[1] if chr(39) in error.message else error.message}"
    where = f"field '{field}'" if field else "the request body"
    return f"{where}: {error.message}"


def _http_code(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "error"


class NotFoundHandler(APIHandler):
    """JSON 404 for every unknown route (no authentication needed to learn a route is unknown)."""

    auth_required = False

    def prepare(self) -> None:  # type: ignore[override]
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}")
