"""Decoding kernel messages on the hot path, lazily.

jupyter_client's ``Session.deserialize`` parses every part of every message and turns each
header date into a ``datetime`` (about 50 µs a message). The gateway reads every iopub message
of a kernel, including those meant for other clients, and needs dates never. ``decode`` checks
the signature like ``Session`` does, parses the headers, and parses content only when asked.

    frames = await socket.recv_multipart()
    message = decode(session, frames)
    if message.parent_id in waiting: msg = message.full()
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from jupyter_client.session import DELIM, Session


class BadMessage(ValueError):
    """Not a kernel message (no delimiter, too few parts) or not signed with the session key."""


class Message:
    __slots__ = ("parts", "header", "parent_header", "_content")

    def __init__(self, parts: list[bytes], header: dict[str, Any], parent_header: dict[str, Any]) -> None:
        self.parts = parts
        self.header = header
        self.parent_header = parent_header
        self._content: dict[str, Any] | None = None

    @property
    def msg_type(self) -> str:
        msg_type: str = self.header.get("msg_type", "")
        return msg_type

    @property
    def parent_id(self) -> str:
        msg_id: str = self.parent_header.get("msg_id", "")
        return msg_id

    @property
    def content(self) -> dict[str, Any]:
        if self._content is None:
            self._content = json.loads(self.parts[4])
        return self._content

    def full(self) -> dict[str, Any]:
        """The message as jupyter_client represents it (dates left as the kernel wrote them)."""
        return {
            "header": self.header,
            "parent_header": self.parent_header,
            "metadata": json.loads(self.parts[3]),
            "content": self.content,
            "buffers": self.parts[5:],
            "msg_id": self.header.get("msg_id"),
            "msg_type": self.msg_type,
        }


def decode(session: Session, frames: list[bytes]) -> Message:
    try:
        parts = frames[frames.index(DELIM) + 1:]
    except ValueError:
        raise BadMessage("no delimiter") from None
    if len(parts) < 5:
        raise BadMessage(f"{len(parts)} parts, at least 5 expected")
    if session.auth is not None and not hmac.compare_digest(parts[0], session.sign(parts[1:5])):
        raise BadMessage("invalid signature")
    return Message(parts, json.loads(parts[1]), json.loads(parts[2]))
