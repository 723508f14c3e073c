"""Files in a sandbox's working directory: ``/api/v1/sandboxes/{id}/files[/{path}]``.

    PUT    /files/{path}        raw body -> the file (parents created); 201 new, 200 replaced
    GET    /files/{path}        the file's bytes, Content-Type from its name
    DELETE /files/{path}        remove a file, symlink or directory; 204
    GET    /files?path=dir      {"path", "entries": [{name, path, type, size, modified}], "truncated"}

Uploads stream through to the sandbox (never held whole in the gateway's memory); a declared
``Content-Length`` over ``SandboxFiles.max_file_bytes`` is refused before the body is read.
Downloads are sent as attachments with ``nosniff`` and a sandboxing CSP, so a file written by
sandboxed code never runs as a page of the gateway's origin.
"""

from __future__ import annotations

import mimetypes
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from tornado import web

from gateway import timestamps
from gateway.api.base import decoded_path, path_argument
from gateway.api.sandboxes import SandboxAPIHandler
from gateway.errors import FileTooLarge, GatewayError, InvalidRequest
from gateway.sandboxes.files import Download, SandboxFiles, Upload

#: Types Python's table lacks, by suffix.
EXTRA_TYPES = {
    ".ipynb": "application/x-ipynb+json",
    ".md": "text/markdown",
    ".parquet": "application/vnd.apache.parquet",
}


def content_type(name: str) -> str:
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    guessed = EXTRA_TYPES.get(suffix) or mimetypes.guess_type(name, strict=False)[0]
    return guessed or "application/octet-stream"


def attachment(name: str) -> str:
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class FilesAPIHandler(SandboxAPIHandler):
    def initialize(self, files: SandboxFiles, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.files = files


class FileListHandler(FilesAPIHandler):
    async def get(self, sandbox_id: str) -> None:
        path = path_argument(self, default="")
        self.write_json(await self.files.list(sandbox_id, self.user, path))


@web.stream_request_body
class FileHandler(FilesAPIHandler):
    upload: Upload | None = None
    #: What went wrong while the body was arriving, answered once it has.
    failed: GatewayError | None = None

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # The URL's path, as the query's: not UTF-8 is 400 invalid_path (Tornado's own is bad_request).
        return decoded_path(value, "the file's path")

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished or self.request.method != "PUT":
            return  # (forwarded: the holder streams the upload into its sandbox)
        sandbox_id, path = self.path_args
        limit = self.files.max_file_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidRequest("the Content-Length header is not a number") from None
            if size > limit:
                raise FileTooLarge(f"the file is {size} bytes, over the limit of {limit} bytes")
        # Chunked bodies are counted as they arrive; the connection is cut well past the limit.
        self.request.connection.set_max_body_size(limit + (1 << 20))  # type: ignore[union-attr]
        self.upload = await self.files.open_upload(sandbox_id, self.user, path)

    async def data_received(self, chunk: bytes) -> None:
        if self.upload is not None and self.failed is None:
            try:
                await self.upload.write(chunk)
            except GatewayError as exc:
                # Raised here, tornado would drop the connection without an answer: the client
                # gets the error (say, 504 file_operation_timeout) once its body is read.
                self.failed = exc

    async def put(self, sandbox_id: str, path: str) -> None:
        assert self.upload is not None
        upload, self.upload = self.upload, None
        if self.failed is not None:
            self.files.abandon(upload)
            raise self.failed
        entry = await upload.finish()
        created = entry.pop("created")
        self.write_json(entry, status=201 if created else 200)

    async def get(self, sandbox_id: str, path: str) -> None:
        download = await self.files.open_download(sandbox_id, self.user, path)
        try:
            self.set_header("Content-Type", content_type(download.entry["name"]))
            self.set_header("Content-Length", str(download.size))
            self.set_header("Content-Disposition", attachment(download.entry["name"]))
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
            modified = timestamps.from_iso(download.entry["modified"])
            if modified is not None:
                self.set_header("Last-Modified", format_datetime(modified, usegmt=True))
        except BaseException:
            await download.close()
            raise
        await send_download(self, download)

    async def delete(self, sandbox_id: str, path: str) -> None:
        await self.files.delete(sandbox_id, self.user, path)
        self.set_status(204)
        self.finish()

    def on_finish(self) -> None:
        self._abandon()

    def on_connection_close(self) -> None:
        self._abandon()
        super().on_connection_close()

    def _abandon(self) -> None:
        if self.upload is not None:
            upload, self.upload = self.upload, None
            self.files.abandon(upload)


async def send_download(handler: web.RequestHandler, download: Download) -> None:
    """Write a download's bytes as they come out of the sandbox (each flush awaited), then finish."""
    try:
        async for chunk in download.chunks():
            handler.write(chunk)
            await handler.flush()
    finally:
        await download.close()
    handler.finish()
