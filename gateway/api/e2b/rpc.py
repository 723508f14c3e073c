"""Our typed errors as Connect errors, for the envd services (process, filesystem).

The SDKs pick their exception by the Connect code: ``not_found`` -> ``NotFoundException``,
``invalid_argument`` -> ``InvalidArgumentException``, ``unauthenticated`` ->
``AuthenticationException``, ``resource_exhausted``, ``unavailable`` (the sandbox is gone) ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

#: Our HTTP statuses -> Connect codes.
CODES = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED,
         404: Code.NOT_FOUND, 409: Code.FAILED_PRECONDITION, 413: Code.RESOURCE_EXHAUSTED,
         422: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED, 502: Code.UNAVAILABLE,
         503: Code.UNAVAILABLE, 507: Code.RESOURCE_EXHAUSTED}


def connect_error(exc: GatewayError) -> ConnectError:
    return ConnectError(CODES.get(exc.status, Code.INTERNAL), exc.message)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise our errors as Connect errors (anything else: ``internal``, details in the log only)."""
    try:
        yield
    except ConnectError:
        raise
    except GatewayError as exc:
        raise connect_error(exc) from None
    except Exception:
        log.exception("envd service failed")
        raise ConnectError(Code.INTERNAL, "internal error (the gateway's log has the details)") from None
