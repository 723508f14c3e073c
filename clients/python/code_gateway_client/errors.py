"""What the SDK raises: API errors carry the gateway's error ``code``; failed code raises on request.

    try:
        sandbox.run("1/0", raise_on_error=True)
    except ExecutionError as error:
        print(error.ename, error.execution.id)
    except APIError as error:
        print(error.status, error.code, error.message)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from code_gateway_client.models import Execution


class GatewayError(Exception):
    """Base of everything this SDK raises on purpose."""


class APIError(GatewayError):
    """The gateway answered with an error: ``{"error": {"code", "message"}}`` and an HTTP status."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds the gateway asked to wait (``Retry-After``), when it said so.
        self.retry_after = retry_after


class ConnectionLost(GatewayError):
    """The gateway could not be reached (after retries), or a stream could not be re-attached.

    ``execution_id`` names the execution when one was accepted: it runs on in the gateway and can
    be fetched later with ``gateway.execution(execution_id)``.
    """

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class ExecutionError(GatewayError):
    """The code did not complete (raised by ``run(..., raise_on_error=True)`` or ``raise_for_error()``)."""

    def __init__(self, execution: Execution) -> None:
        error = execution.error
        self.execution = execution
        self.code = error.code if error else execution.status
        self.ename = error.ename if error else ""
        self.evalue = error.evalue if error else ""
        self.traceback = list(error.traceback) if error else []
        super().__init__(f"execution {execution.id} {execution.status}: "
                         + (f"{self.ename}: {self.evalue}" if error else "no error recorded"))


def api_error(status: int, body: Any, *, retry_after: float | None = None) -> APIError:
    """The ``APIError`` for a response's status and parsed JSON body (any shape)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return APIError(status, error["code"], str(error.get("message", "")), retry_after=retry_after)
    return APIError(status, "http_error", f"the gateway answered {status}", retry_after=retry_after)
