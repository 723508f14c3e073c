"""Typed domain errors, each carrying the HTTP status and the stable error code the API reports.

Domain code raises these; only ``gateway.api.base`` turns them into responses of the one JSON
error shape ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a client may see; ``message`` is safe to show to that client."""

    status = 500
    code = "internal_error"
    #: Seconds after which trying again may succeed (sent as ``Retry-After``), if that is known.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"


class InvalidJSON(GatewayError):
    status = 400
    code = "invalid_json"


class InvalidCode(InvalidRequest):
    """Code no execution can take (a NUL, a lone surrogate); the message says what and where."""

    code = "invalid_code"


class InvalidEnv(InvalidRequest):
    """Environment variables no process can be given (a bad name, a NUL); the message names the variable."""

    code = "invalid_env"


class InvalidPath(GatewayError):
    status = 400
    code = "invalid_path"


class InvalidNotebook(GatewayError):
    status = 400
    code = "invalid_notebook"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NetworkNotAllowed(Forbidden):
    code = "network_not_allowed"


class IsolationNotAllowed(Forbidden):
    """A sandbox asked for an isolation the operator does not offer."""

    code = "isolation_not_allowed"


class OriginNotAllowed(Forbidden):
    """A browser page of an origin the operator did not allow."""

    code = "origin_not_allowed"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"no sandbox with id {sandbox_id!r}")


class ExecutionNotFound(NotFound):
    code = "execution_not_found"

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution with id {execution_id!r}")


class FileNotFound(NotFound):
    code = "file_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(GatewayError):
    """The request's ``Accept`` header accepts none of the media types the endpoint answers with."""

    status = 406
    code = "not_acceptable"


class SandboxNotRunning(GatewayError):
    """The sandbox exists but cannot take work in its current state."""

    status = 409
    code = "sandbox_not_running"


class SandboxBusy(GatewayError):
    """Another lifecycle operation of the sandbox (a restart, a delete) is under way."""

    status = 409
    code = "sandbox_busy"


class SessionReplaced(GatewayError):
    """A Jupyter channels socket whose client session opened a newer socket before this one was open."""

    status = 409
    code = "session_replaced"


class SandboxPaused(GatewayError):
    """The sandbox is paused and does not resume by itself (``auto_resume: false``)."""

    status = 409
    code = "sandbox_paused"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"


class LimitOutOfRange(GatewayError):
    """A resource limit outside what the gateway allows; the message names the field."""

    status = 422
    code = "limit_out_of_range"


class IsolationUnavailable(GatewayError):
    """An isolation this gateway cannot provide (its runtime is not registered, or sandboxes are local processes)."""

    status = 422
    code = "isolation_unavailable"


class QuotaExceeded(GatewayError):
    """Over one of the user's quotas; the message names it, its limit and the current use."""

    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyQueued(GatewayError):
    """A sandbox has as many executions waiting as it may: retry when some have run."""

    status = 429
    code = "too_many_queued"
    retry_after = 1


class TooManyOperations(GatewayError):
    """Too many file or state operations already run inside this sandbox (its own tools stall, say)."""

    status = 429
    code = "too_many_operations"


class TooManyCommands(GatewayError):
    """A sandbox runs as many commands as it may at once."""

    status = 429
    code = "too_many_commands"


class TooManyFollowers(GatewayError):
    """A sandbox's commands have as many followers as they may: one must go before another comes."""

    status = 429
    code = "too_many_followers"


class SandboxDiskFull(GatewayError):
    """The sandbox's working directory has no room for what was asked."""

    status = 507
    code = "disk_full"


class SandboxStartFailed(GatewayError):
    status = 503
    code = "sandbox_start_failed"


class StoreUnavailable(GatewayError):
    """The store cannot make records durable right now, so new work is refused rather than acknowledged."""

    status = 503
    code = "store_unavailable"


class EngineUnavailable(GatewayError):
    """The container engine failed an operation the request needed (its own error is in the log)."""

    status = 503
    code = "engine_unavailable"


class ServerBusy(GatewayError):
    """The gateway holds as many request bodies in memory as it may (``--max-buffered-body-bytes``):
    this one was read and dropped; sent again in a few seconds, it may fit."""

    status = 503
    code = "server_busy"
    retry_after = 5


class ShuttingDown(GatewayError):
    """The gateway is stopping: it starts no sandbox and accepts no execution any more."""

    status = 503
    code = "shutting_down"


class SandboxHeldElsewhere(GatewayError):
    """Another replica holds the sandbox's runtime: the API forwards the request to ``address``.

    Seen by a client only when forwarding was not possible (the request had been forwarded
    already, or the holder could not be reached and its lease has not lapsed yet): try again.
    """

    status = 503
    code = "sandbox_elsewhere"
    retry_after = 1

    def __init__(self, sandbox_id: str, replica_id: str, address: str, message: str | None = None) -> None:
        super().__init__(message or f"sandbox {sandbox_id} is held by another replica of this gateway "
                         f"({replica_id}); try again")
        self.sandbox_id = sandbox_id
        self.replica_id = replica_id
        self.address = address
