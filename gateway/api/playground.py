"""The browser playground at ``/``: one static page (``gateway/playground/``) over the public API.

No build step and no third-party code; served with a strict Content-Security-Policy: scripts and
styles only from the gateway, images also as ``data:`` URLs, connections only back to the
gateway, no plugins, forms, base changes or framing by others. Outputs of type ``text/html``
are shown in ``<iframe sandbox>`` frames, which inherit this policy and get no scripts at all.
"""

from __future__ import annotations

from pathlib import Path

from tornado import web

from gateway.api.base import JSONErrors

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])


class PlaygroundHandler(JSONErrors, web.StaticFileHandler):
    """The page and its two files, each with the policy; no key needed (the page asks for one)."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")


def playground_routes() -> list[tuple[str, type[web.RequestHandler], dict[str, str]]]:
    where = {"path": str(PLAYGROUND_DIR)}
    return [
        (r"/()", PlaygroundHandler, {**where, "default_filename": "index.html"}),
        (r"/playground/(playground\.(?:js|css))", PlaygroundHandler, where),
    ]
