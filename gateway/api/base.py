"""What every API handler shares: authentication, JSON bodies, and the one JSON error shape.

    class SandboxHandler(APIHandler):
        def initialize(self, sandboxes: SandboxManager, **base) -> None:
            super().initialize(**base)
            self.sandboxes = sandboxes

Errors: domain code raises ``GatewayError`` subclasses; ``write_error`` turns them (and Tornado's
own ``HTTPError``, and anything unexpected) into ``{"error": {"code": ..., "message": ...}}`` with
the error's status. An unexpected exception is logged with its traceback and answered with a
bare 500: a response never carries a traceback of the gateway, nor the text of an internal error.
A 405 says which methods the route has (``Allow``).

Browsers: a request's ``Origin`` must be the gateway's own (the request's ``Host``) or one of
``allow_origins`` (exact matches; ``*`` for any). Allowed origins get CORS headers and answered
preflights (``OPTIONS``); any other origin gets no CORS header, a 403 preflight, and no
WebSocket (``check_websocket``).

File paths in a query (``?path=``) are read by ``path_argument``: as sent, and refused (400
``invalid_path``) if not UTF-8 or holding a NUL.

Logs never carry a secret: a request's URI is logged with ``scrub_uri`` (``?token=KEY`` becomes
``?token=[secret]``), and the request's headers are never logged.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, TypeVar, overload
from urllib.parse import unquote_plus, urlparse

from tornado import web
from tornado.httputil import HTTPHeaders

from gateway import jsonbytes
from gateway.api.schemas import BodyValidator
from gateway.api.streams import write_large
from gateway.auth import KeyRing
from gateway.errors import (
    GatewayError,
    InvalidJSON,
    InvalidPath,
    InvalidRequest,
    NotFound,
    OriginNotAllowed,
    Unauthorized,
)

log = logging.getLogger(__name__)


#: Query parameters whose values are secrets (compared lowercased, as jupyter_server scrubs them).
SECRET_PARAMETERS = frozenset({"token", "key", "api_key", "apikey", "access_token", "auth", "password", "secret"})


def scrub_uri(uri: str) -> str:
    """``uri`` with the value of every secret query parameter replaced, for logs."""
    path, question, query = uri.partition("?")
    if not question:
        return uri
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            part = f"{name}=[secret]"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


def request_summary(handler: web.RequestHandler) -> str:
    """``METHOD uri (remote ip)`` with secrets scrubbed: how a request appears in a log line."""
    request = handler.request
    return f"{request.method} {scrub_uri(request.uri or '')} ({request.remote_ip})"


#: Paged listings: the ``limit`` when none is given, and the largest allowed.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: The largest offset (and re-attach position) taken: JavaScript's largest exact integer.
MAX_OFFSET = (1 << 53) - 1

#: Request headers a cross-origin page may send (what a preflight grants).
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Accept, Last-Event-ID"
#: Response headers a cross-origin page may read.
CORS_EXPOSED_HEADERS = "Location, X-Execution-Id, Retry-After, Content-Disposition"
#: How long a browser may cache a preflight's answer, in seconds.
CORS_MAX_AGE = 600


def origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    """The gateway's own origin (same ``host:port`` as the request's ``Host``) or one listed.

    Exact comparisons, never prefixes or patterns: ``http://a.example`` does not allow
    ``http://a.example.evil``. ``*`` in ``allowed`` allows every origin.
    """
    if "*" in allowed:
        return True
    normalized = origin.strip().rstrip("/").lower()
    if normalized in {entry.strip().rstrip("/").lower() for entry in allowed}:
        return True
    parsed = urlparse(normalized)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc) and parsed.netloc == host.lower()


def request_origin(handler: web.RequestHandler) -> str | None:
    """The browser origin a request comes from (None from non-browser clients)."""
    return origin_of(handler.request.headers)


def origin_of(headers: HTTPHeaders) -> str | None:
    """The browser origin request ``headers`` say (None from non-browser clients)."""
    return headers.get("Origin") or headers.get("Sec-Websocket-Origin")


def cors_headers(origin: str | None, host: str, allowed: list[str]) -> dict[str, str]:
    """The CORS headers of an answer to a request from ``origin`` (``Host``: ``host``): what lets a
    page of an allowed origin read it (``--allow-origins``); none for a non-browser client."""
    if origin is None:
        return {}
    if not origin_allowed(origin, host, allowed):
        return {"Vary": "Origin"}
    return {"Vary": "Origin", "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS}


def check_websocket(handler: web.RequestHandler, allow_origins: list[str]) -> None:
    """Refuse, as a JSON error, what Tornado's WebSocket code would refuse with a text page:
    a request that is not a WebSocket upgrade (400), or one from a foreign browser origin (403)."""
    headers = handler.request.headers
    if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("Connection", "").lower():
        raise InvalidRequest("this endpoint is a WebSocket: the request must be an upgrade "
                             "('Connection: Upgrade', 'Upgrade: websocket')")
    origin = request_origin(handler)
    if origin is not None and not origin_allowed(origin, handler.request.host, allow_origins):
        raise OriginNotAllowed(f"origin {origin!r} is not allowed here: only the gateway's own origin and "
                               "those in --allow-origins may open WebSockets")


class Required:
    """The ``default`` of an argument a request must give."""


REQUIRED = Required()
_Default = TypeVar("_Default", str, None)


@overload
def path_argument(handler: web.RequestHandler, name: str = "path") -> str: ...


@overload
def path_argument(handler: web.RequestHandler, name: str = "path", *, default: _Default) -> str | _Default: ...


def path_argument(handler: web.RequestHandler, name: str = "path",
                  *, default: str | None | Required = REQUIRED) -> str | None:
    """The query argument ``name`` (the last if repeated) as a file path, exactly as sent; ``default``
    if it is absent (without one: 400 ``invalid_path``, it is required).

    Not Tornado's ``get_argument``: that strips whitespace and turns control characters into
    spaces, so ``?path=a%20`` would name ``a`` and ``?path=a%00b`` name ``a b``, not what was sent.
    """
    values = handler.request.query_arguments.get(name)
    if not values:
        if isinstance(default, Required):
            raise InvalidPath(f"the query parameter {name!r} is required: the path of a file")
        return default
    return decoded_path(values[-1], f"the query parameter {name!r}")


def decoded_path(raw: bytes, what: str) -> str:
    """A path's percent-decoded bytes as text: 400 ``invalid_path`` unless UTF-8 without a NUL
    (no file name holds a NUL; one that is not UTF-8 cannot be named in the API's JSON)."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPath(f"{what} is not valid UTF-8 (byte 0x{raw[exc.start]:02X} at {exc.start})") from None
    if "\x00" in path:
        raise InvalidPath(f"{what} contains a NUL character (%00): no file name can hold one")
    return path


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def bearer_token(handler: web.RequestHandler) -> str:
    """The API key of a request: ``Authorization: Bearer KEY`` (or ``token KEY``, as Jupyter clients send)."""
    scheme, _, credentials = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and credentials.strip():
        return credentials.strip()
    return ""


class JSONErrors:
    """Errors as the one JSON shape, expected ``GatewayError``s logged quietly, secrets never
    logged. Mixed into every handler class (plain, WebSocket, jupyter_server's) ahead of its
    Tornado base."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code, kwargs.get("exc_info", (None, None, None))[1])  # type: ignore[arg-type]

    def _request_summary(self) -> str:
        # Tornado's own log lines (and jupyter_server's) use this; its version logs the raw URI.
        return request_summary(self)  # type: ignore[arg-type]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Tornado's version also logs repr(request), the raw URI again.
        handler: web.RequestHandler = self  # type: ignore[assignment]
        if log_domain_error(handler, value):
            return
        if isinstance(value, web.HTTPError):
            message = value.get_message()
            if message:
                log.warning("%d %s: %s", value.status_code, request_summary(handler), message)
            return
        log.error("uncaught exception in %s", request_summary(handler), exc_info=(typ, value, tb))


class APIHandler(JSONErrors, web.RequestHandler):
    """A JSON API handler: authenticated unless ``auth_required`` is False; CORS for allowed origins."""

    auth_required = True

    def initialize(self, keyring: KeyRing, allow_origins: list[str] | None = None, **_: Any) -> None:
        self.keyring = keyring
        self.allow_origins = allow_origins or []
        self._cors_headers()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self._cors_headers()  # again after an error cleared the headers

    def _cors_headers(self) -> None:
        if not hasattr(self, "allow_origins"):
            return  # Tornado sets default headers before initialize(); it is called again after it
        for name, value in cors_headers(request_origin(self), self.request.host, self.allow_origins).items():
            self.set_header(name, value)

    def request_token(self) -> str:
        return bearer_token(self)

    async def prepare(self) -> None:
        # A preflight never carries credentials: it is answered (or refused) by its origin alone.
        if self.auth_required and self.request.method != "OPTIONS":
            self.current_user = await authenticate(self.keyring, self.request_token())

    def options(self, *args: str) -> None:
        """A CORS preflight: 204 with what the origin may do, or 403 for an origin not allowed."""
        origin = request_origin(self)
        if origin is not None and not origin_allowed(origin, self.request.host, self.allow_origins):
            raise OriginNotAllowed(f"origin {origin!r} is not allowed: only the gateway's own origin and those "
                                   "in --allow-origins may call the API from a browser")
        self.set_header("Allow", ", ".join(allowed_methods(self)))
        if origin is not None:
            self.set_header("Access-Control-Allow-Methods", ", ".join(allowed_methods(self)))
            self.set_header("Access-Control-Allow-Headers", CORS_REQUEST_HEADERS)
            self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE))
        self.clear_header("Content-Type")
        self.set_status(204)
        self.finish()

    @property
    def user(self) -> str:
        assert isinstance(self.current_user, str)
        return self.current_user

    # -- bodies ----------------------------------------------------------------------------------

    def json_body(self, validator: BodyValidator | None = None, *, allow_empty: bool = False) -> dict[str, Any]:
        """The request's JSON object, checked against ``validator`` (400 naming the bad field); one
        nested more than ``jsonbytes.MAX_DEPTH`` levels deep is ``invalid_json``."""
        if not self.request.body.strip():
            if allow_empty:
                return {}
            raise InvalidJSON("the request body must be a JSON object")
        try:
            body = jsonbytes.loads_bounded(self.request.body)
        except jsonbytes.TooDeep as exc:
            raise InvalidJSON(f"the request body is refused: {exc}") from None
        except ValueError as exc:  # bad JSON or bad UTF-8
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidJSON("the request body must be a JSON object")
        if validator is not None:
            problem = next(iter(sorted(validator.iter_errors(body), key=lambda e: list(e.path))), None)
            if problem is not None:
                raise InvalidRequest(describe(problem))
        return body

    def paging(self) -> tuple[int, int]:
        """The ``limit`` (1..1000, default 100) and ``offset`` (at least 0) query arguments."""
        try:
            limit = int(self.get_argument("limit", str(DEFAULT_PAGE)))
            offset = int(self.get_argument("offset", "0"))
        except ValueError:
            raise InvalidRequest("query parameters 'limit' and 'offset' must be integers") from None
        if not 0 < limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
            raise InvalidRequest(f"'limit' must be 1..{MAX_PAGE} and 'offset' 0..{MAX_OFFSET}")
        return limit, offset

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        write_large(self, jsonbytes.pieces(data))  # (a large one in pieces, never joined)


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
        status_code = exc.status
        body = error_body(exc.code, exc.message)
        if exc.retry_after is not None:
            handler.set_header("Retry-After", str(exc.retry_after))
    elif isinstance(exc, web.HTTPError):
        body = error_body(_http_code(status_code), exc.get_message() or _reason(status_code))
    else:
        body = error_body(_http_code(status_code), _reason(status_code))
    if status_code == 405:
        handler.set_header("Allow", ", ".join(allowed_methods(handler)))
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.finish(jsonbytes.dumps(body))


def allowed_methods(handler: web.RequestHandler) -> list[str]:
    """The HTTP methods ``handler``'s class implements (what a 405's ``Allow`` header lists)."""
    return [
        method for method in handler.SUPPORTED_METHODS
        if getattr(type(handler), method.lower(), None) is not getattr(web.RequestHandler, method.lower(), None)
    ]


def log_domain_error(handler: web.RequestHandler, exc: BaseException | None) -> bool:
    """Log an expected ``GatewayError`` quietly; False for anything else (log it with its traceback)."""
    if isinstance(exc, GatewayError):
        log.debug("%s %s -> %s %s", handler.request.method, handler.request.path, exc.status, exc.code)
        return True
    return False


def describe(error: Any) -> str:
    """A jsonschema error as one sentence naming the field, never quoting its value.

    jsonschema's own messages start with the value (``'sk-…' is not of type 'object'``): a secret
    sent in the wrong place (an ``env`` value, a token) would come back in the response and its
    logs, and a megabyte sent would come back as a megabyte. Field names are quoted; values never.
    """
    field = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{'.'.join([field, e]) if field else e}" for e in extra)
        return f"unknown field: {_clipped(names)}"
    if error.validator == "required":
        return f"missing field: {error.message.split(chr(39))[1] if chr(39) in error.message else error.message}"
    if error.validator == "not" and isinstance(error.validator_value, dict) and "required" in error.validator_value:
        return f"give only one of the fields {', '.join(error.validator_value['required'])}"
    where = f"field '{field}'" if field else "the request body"
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        # (a name, not a value: said, as the field is)
        return f"{where}: the name '{_clipped(error.instance)}' {_broken_rule(error.validator, error.validator_value)}"
    return f"{where}: {_broken_rule(error.validator, error.validator_value)}"


#: How a value breaks each keyword our schemas use, said without the value.
_RULES: dict[str, str] = {
    "type": "is not of type {}", "enum": "is not one of {}", "const": "is not {}",
    "minLength": "is shorter than {} characters", "maxLength": "is longer than {} characters",
    "minimum": "is less than {}", "maximum": "is greater than {}",
    "exclusiveMinimum": "is not greater than {}", "exclusiveMaximum": "is not less than {}",
    "pattern": "does not match the pattern {}", "format": "is not a valid {}",
    "minItems": "has fewer than {} items", "maxItems": "has more than {} items",
    "uniqueItems": "has items that are not unique",
}


def _broken_rule(keyword: str, rule: Any) -> str:
    template = _RULES.get(keyword)
    if template is None:
        return f"is not valid ({keyword})"
    joined = " or " if keyword == "type" else ", "
    shown = joined.join(repr(item) for item in rule) if isinstance(rule, list) else repr(rule)
    return template.format(_clipped(shown))


def _clipped(text: str, limit: int = 200) -> str:
    """``text``, or its start and an ellipsis: a message stays a sentence whatever was sent."""
    return text if len(text) <= limit else text[:limit] + "…"


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
