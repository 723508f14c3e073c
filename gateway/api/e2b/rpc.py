"""Our typed errors as Connect errors, for the envd services (process, filesystem).

The SDKs pick their exception by the Connect code: ``not_found`` -> ``NotFoundException``,
``invalid_argument`` -> ``InvalidArgumentException``, ``unauthenticated`` ->
``AuthenticationException``, ``resource_exhausted``, ``unavailable`` (the sandbox is gone) ...

A request body the codec cannot decode (not JSON, a wrong type, broken protobuf) is the client's
error: ``CODECS`` (every codec the services speak, each a ``ClientErrorCodec``) answer it as
``invalid_argument`` naming the problem (HTTP 400 for a unary call, the stream's end message for
a streaming one), where connectrpc would answer ``unknown`` (HTTP 500) and log it as the
gateway's failure; so do ``COMPRESSIONS`` for a body that does not decompress. JSON is read
by ``DepthBoundedJSON``: protobuf-py's JSON parse crashes the whole interpreter (a segfault) on
a message of 100,000 nested ``[``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.compression import Compression
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError

from gateway import jsonbytes
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

#: Our HTTP statuses -> Connect codes.
CODES = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED,
         404: Code.NOT_FOUND, 409: Code.FAILED_PRECONDITION, 413: Code.RESOURCE_EXHAUSTED,
         422: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED, 502: Code.UNAVAILABLE,
         503: Code.UNAVAILABLE, 507: Code.RESOURCE_EXHAUSTED}


#: How much of a decoder's complaint an answer quotes.
MAX_PROBLEM = 300

_Message = TypeVar("_Message")


@contextlib.contextmanager
def clients_fault(what: str) -> Iterator[None]:
    """A failure to read the request's bytes raised as ``invalid_argument``: ``what``, then why.
    (Decoding and decompressing are pure: whatever fails there is in the bytes the client sent.)"""
    try:
        yield
    except ConnectError:
        raise  # (connectrpc's own: a message over the size limit, say)
    except Exception as exc:
        problem = str(exc)[:MAX_PROBLEM] or type(exc).__name__
        raise ConnectError(Code.INVALID_ARGUMENT, f"{what}: {problem}") from None


class ClientErrorCodec:
    """``codec``, its decoding failures raised as ``invalid_argument`` (the request's fault)."""

    def __init__(self, codec: Codec[Any, Any]) -> None:
        self.codec = codec

    def name(self) -> str:
        return self.codec.name()

    def encode(self, message: Any) -> bytes:
        return self.codec.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[_Message]) -> _Message:
        with clients_fault(f"the request body is not a valid {message_class.__name__} in {self.name()} encoding"):
            return self.codec.decode(data, message_class)  # type: ignore[no-any-return]


class ClientErrorCompression:
    """``compression``, its decompression failures raised as ``invalid_argument``."""

    def __init__(self, compression: Compression) -> None:
        self.compression = compression

    def name(self) -> str:
        return self.compression.name()

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return self.compression.compress(data)

    def decompress(self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None) -> bytes:
        with clients_fault(f"the request body is not valid {self.name()}"):
            return self.compression.decompress(data, read_max_bytes)


class DepthBoundedJSON:
    """connectrpc's JSON codec, a message nested more than ``jsonbytes.MAX_DEPTH`` levels deep
    refused (``TooDeep``) before protobuf-py parses it."""

    def __init__(self) -> None:
        self.codec: Codec[Any, Any] = proto_json_codec()

    def name(self) -> str:
        return self.codec.name()

    def encode(self, message: Any) -> bytes:
        return self.codec.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[_Message]) -> _Message:
        try:
            jsonbytes.loads_bounded(data)
        except jsonbytes.TooDeep:
            raise
        except ValueError:
            pass  # (not JSON: the codec's own parse says so)
        return self.codec.decode(data, message_class)  # type: ignore[no-any-return]


#: The codecs the envd services are served with (connectrpc's defaults: binary protobuf, JSON).
CODECS = [ClientErrorCodec(proto_binary_codec()), ClientErrorCodec(DepthBoundedJSON())]
#: And their compressions (connectrpc's default, gzip; identity is always there).
COMPRESSIONS = [ClientErrorCompression(GzipCompression())]


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
