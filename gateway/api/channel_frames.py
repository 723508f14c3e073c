"""What a Jupyter client may send on a kernel channels socket, checked before jupyter_server reads it.

    check_frame(frame, subprotocol)   # BadFrame(reason) for a frame that is no Jupyter message

jupyter_server takes a frame apart without looking: one it cannot read raised in its handler
(Tornado then dropped the connection without a Close frame) and one it could read but no kernel
answers (no ``msg_type``, an unknown channel) was sent on or dropped, the client left waiting for a
reply that never comes. A frame must be a whole message of the socket's protocol:

- the default JSON protocol: a text frame, one JSON object (at most ``jsonbytes.MAX_DEPTH`` deep)
  with ``channel`` (``shell``, ``control`` or ``stdin``; none is shell, as jupyter_server takes it and
  its own ``GatewayKernelClient`` relies on), ``header`` (``msg_id``, ``msg_type``),
  ``parent_header`` and ``metadata`` objects, and ``content`` an object if given; ``buffers`` come
  in binary frames only: a 4-byte count, that many 4-byte offsets (the first just past them, none
  going back or past the end), the message's JSON, then the buffers;
- ``v1.kernel.websocket.jupyter.org``: binary frames only, an 8-byte count of offsets and the
  offsets (the first just past them, none going back, the last at the frame's end), the channel,
  then the header (as above), parent header, metadata and content (each a JSON object) and buffers.

The socket is closed with 1007 (RFC 6455: data inconsistent with the message's type) and a reason
saying what was wrong (see ``KernelChannelsHandler.on_message``).
"""

from __future__ import annotations

import struct
from typing import Any, Literal

from gateway.jsonbytes import TooDeep, is_object, loads_bounded

#: The close code of a socket that sent a frame that is no Jupyter message.
BAD_FRAME_CLOSE_CODE = 1007
#: The channels a client sends on (iopub carries the kernel's messages only).
CLIENT_CHANNELS = ("shell", "control", "stdin")
#: jupyter_server's binary subprotocol, which it relays without decoding.
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: A close reason's most bytes (a Close frame holds 125, two of them its code).
MAX_REASON = 123


class BadFrame(Exception):
    """A frame that is no message of the socket's protocol; ``reason`` says why, short enough for a Close frame."""

    def __init__(self, reason: str) -> None:
        encoded = reason.encode()
        if len(encoded) > MAX_REASON:
            reason = encoded[:MAX_REASON - 3].decode(errors="ignore") + "..."
        super().__init__(reason)
        self.reason = reason


def check_frame(frame: str | bytes, subprotocol: str | None) -> None:
    """Refuse (``BadFrame``) a frame that is not one whole message of ``subprotocol``'s framing."""
    if subprotocol == V1_PROTOCOL:
        check_v1_frame(frame)
    elif isinstance(frame, str):
        check_message(_json(frame, "the message"))
    else:
        check_message(_json(_binary_message(frame), "the message's JSON part"), buffers=False)


def check_message(message: Any, *, buffers: bool = True) -> None:
    """A message of the JSON protocol (``channel``, ``header`` ... in one object); ``buffers``: whether
    it may not hold any (a text frame's), else the binary frame's own come after it."""
    if not isinstance(message, dict):
        raise BadFrame("a message must be a JSON object")
    if "channel" in message:  # (none is shell, as jupyter_server takes it: its own gateway client sends none)
        _check_channel(message["channel"])
    _check_header(message.get("header"))
    for part in ("parent_header", "metadata"):
        if not isinstance(message.get(part), dict):
            raise BadFrame(f"the message's {part} must be a JSON object")
    if not isinstance(message.get("content", {}), dict):
        raise BadFrame("the message's content must be a JSON object")
    if buffers and message.get("buffers", []) != []:
        raise BadFrame("buffers come in a binary frame, not in a text frame's JSON")


def check_v1_frame(frame: str | bytes) -> None:
    """A frame of ``v1.kernel.websocket.jupyter.org``: its offsets, channel and four JSON parts."""
    if isinstance(frame, str):
        raise BadFrame(f"a text frame on a {V1_PROTOCOL} socket: its messages are binary frames")
    offsets = _offsets(frame, width=8, order="little", least=6, what="v1 frame")
    if offsets[-1] != len(frame):
        raise BadFrame(f"v1 frame: its last offset ({offsets[-1]}) is not its end ({len(frame)} bytes)")
    try:
        channel = frame[offsets[0]:offsets[1]].decode()
    except UnicodeDecodeError:
        raise BadFrame("v1 frame: its channel is not UTF-8") from None
    _check_channel(channel)
    parts = [frame[start:end] for start, end in zip(offsets[1:5], offsets[2:6])]
    _check_header(_json(parts[0], "the header"))
    for name, part in zip(("parent_header", "metadata", "content"), parts[1:]):
        if not is_object(part):
            raise BadFrame(f"v1 frame: its {name} is not one JSON object")


def _binary_message(frame: bytes) -> bytes:
    """The JSON part of the JSON protocol's binary frame (as ``deserialize_binary_message`` cuts it)."""
    offsets = _offsets(frame, width=4, order="big", least=1, what="binary frame")
    return frame[offsets[0]:offsets[1] if len(offsets) > 1 else len(frame)]


def _offsets(frame: bytes, *, width: int, order: Literal["little", "big"], least: int, what: str) -> list[int]:
    """A frame's count of offsets and the offsets after it, checked: at least ``least``, the first just
    past the table, none going back or past the frame's end."""
    if len(frame) < width:
        raise BadFrame(f"{what}: {len(frame)} bytes, too short for its count of offsets")
    count = int.from_bytes(frame[:width], order, signed=True)
    table = width * (count + 1)
    if count < least or table > len(frame):
        raise BadFrame(f"{what}: its count of offsets ({count}) does not fit {len(frame)} bytes (at least {least})")
    offsets = list(struct.unpack(f"{'<' if order == 'little' else '>'}{count}{'Q' if width == 8 else 'I'}",
                                 frame[width:table]))
    if offsets[0] != table:
        raise BadFrame(f"{what}: its first offset ({offsets[0]}) is not the end of its offsets ({table})")
    if any(later < earlier for earlier, later in zip(offsets, offsets[1:])) or offsets[-1] > len(frame):
        raise BadFrame(f"{what}: its offsets go back or past its end ({len(frame)} bytes)")
    return offsets


def _json(data: str | bytes, what: str) -> Any:
    try:
        return loads_bounded(data)
    except TooDeep as exc:
        raise BadFrame(f"{what}: {exc}") from None
    except ValueError:
        raise BadFrame(f"{what} is not JSON") from None


def _check_channel(channel: Any) -> None:
    if channel == "iopub":
        raise BadFrame("iopub carries the kernel's messages only: a client sends on shell, control or stdin")
    if channel not in CLIENT_CHANNELS:
        raise BadFrame(f"unknown channel {str(channel)[:40]!r}: a client sends on shell, control or stdin")


def _check_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise BadFrame("the message's header must be a JSON object")
    for field in ("msg_type", "msg_id"):
        if not isinstance(header.get(field), str) or not header[field]:
            raise BadFrame(f"the message's header has no {field} (a non-empty string)")
