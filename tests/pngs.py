"""PNG images in outputs, checked without a decoder: ``png_size(base64_png) -> (width, height)``."""

from __future__ import annotations

import base64
import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(encoded: str) -> tuple[int, int]:
    """Width and height of a base64 PNG, from its IHDR chunk (after checking the signature)."""
    data = base64.b64decode(encoded)
    assert data.startswith(PNG_SIGNATURE), data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
