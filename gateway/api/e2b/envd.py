"""envd's plain HTTP routes (port 49983): ``/health``, ``/metrics``, ``/envs``, ``/files``.

``GET /health`` is what ``is_running`` asks: 204 while the sandbox runs (a paused one is not
woken: it answers 502, "not running", as E2B's does).
"""

from __future__ import annotations

import zlib
from typing import Any

from gateway import timestamps
from gateway.api.base import path_argument
from gateway.api.e2b import paths
from gateway.api.files import send_download
from gateway.api.e2b.traffic import SandboxTrafficHandler
from gateway.api.e2b.usage import cpu_count, cpu_percent, disk_used, memory_used
from gateway.errors import FileTooLarge, InvalidRequest
from gateway.sandboxes.files import SandboxFiles


class HealthHandler(SandboxTrafficHandler):
    wakes = False

    async def get(self) -> None:
        self.set_status(204)
        self.finish()


class MetricsHandler(SandboxTrafficHandler):
    """envd's ``Metrics``: what the sandbox uses now, from its cgroup (or process tree)."""

    wakes = False

    async def get(self) -> None:
        usage = await self.sandboxes.usage(self.sandbox.id, self.user)
        self.write_json({
            "ts": int(timestamps.now().timestamp()),
            "cpu_count": cpu_count(self.sandbox),
            "cpu_used_pct": cpu_percent(self.sandbox, usage),
            "mem_total": usage["memory"]["limit_bytes"],
            "mem_used": memory_used(usage),
            "disk_total": usage["disk"]["limit_bytes"],
            "disk_used": disk_used(usage),
        })


class EnvsHandler(SandboxTrafficHandler):
    """The sandbox's environment variables (what it was created with)."""

    async def get(self) -> None:
        self.write_json(dict(self.sandbox.env))


class FilesHandler(SandboxTrafficHandler):
    """``GET /files?path=`` downloads a file; ``POST /files[?path=]`` uploads one or more (multipart,
    each part named by its path, or one ``application/octet-stream`` body, gzip-encoded or not, whose
    ``path`` is required). ``path`` is taken as sent (``path_argument``: spaces are part of a name).

    Through the sandbox's file tool, as our own files API: confined to the working directory,
    at most ``--max-file-bytes`` per file (a larger one: 413).
    """

    def initialize(self, files: SandboxFiles, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.files = files

    async def get(self) -> None:
        path = paths.relative(path_argument(self))
        download = await self.files.open_download(self.sandbox.id, self.user, path)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(download.size))
        await send_download(self, download)

    async def post(self) -> None:
        if self.request.headers.get("Content-Type", "").startswith("application/octet-stream"):
            body = self.request.body
            if self.request.headers.get("Content-Encoding", "").lower() == "gzip":
                body = self._gunzipped(body)
            uploads = [(path_argument(self), body)]
        else:
            parts = self.request.files.get("file", [])
            if not parts:
                raise InvalidRequest("no file in the request (a multipart part named 'file')")
            single = path_argument(self, default=None)
            uploads = [(single if single is not None and len(parts) == 1 else part.filename, part.body)
                       for part in parts]
        written = []
        for e2b_path, data in uploads:
            if not e2b_path:
                raise InvalidRequest("a file's path is required (the 'path' parameter or the part's file name)")
            upload = await self.files.open_upload(self.sandbox.id, self.user, paths.relative(e2b_path))
            for start in range(0, len(data), 1 << 16):
                await upload.write(data[start:start + (1 << 16)])
            entry = await upload.finish()
            written.append({"name": entry["name"], "type": "file", "path": paths.absolute(entry["path"])})
        self.write_json(written)

    def _gunzipped(self, body: bytes) -> bytes:
        limit = self.files.max_file_bytes
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = decompressor.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidRequest(f"the body is not valid gzip: {exc}") from None
        if len(data) > limit:
            raise FileTooLarge(f"the file is over the limit of {limit} bytes")
        return data
