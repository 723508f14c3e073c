"""Kernel messages on the hot path: decoded lazily, admitted only if signed with the sandbox's key.

jupyter_client's ``Session.deserialize`` parses every part of every message and turns each
header date into a ``datetime`` (about 50 µs a message). The gateway reads every iopub message
of a kernel, including those meant for other clients, and needs dates never. ``decode`` checks
the signature like ``Session`` does, parses the headers, and parses content only when asked.

Everything a kernel sends is untrusted: the code in a sandbox can write any bytes onto its
kernel's sockets. ``MessageGate`` is the one check every relayed message passes (our own
reader, and jupyter_server's channels WebSocket in both protocols)::

    gate = MessageGate(sandbox_id, session, dropped=metrics.kernel_messages_dropped)
    message = gate.admit("iopub", frames)      # None: dropped, counted, logged at most once a minute
    if message is not None and message.parent_id in waiting: msg = message.full()

Each iopub message reaches the gateway once per socket subscribed to it: the sandbox's own
connection and each Jupyter channels WebSocket (``gate.copies_more(1)`` while one is open). The
signature of a large one (HMAC-SHA256: 5 ms for a 10 MB table) is then computed once: a copy
byte-for-byte equal to a message the gate verified with the same key is that message.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from jupyter_client.session import DELIM, Session
from prometheus_client import Counter

from gateway import jsonbytes
from gateway.jsonbytes import Buffer
from gateway.provisioners.relay import CUT

log = logging.getLogger(__name__)

#: Why a message was dropped (the ``reason`` label of the dropped-messages counter).
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
#: Output that arrived while more than its request's bound waited to be handled (see ``Replies``).
OUTRAN = "outran_gateway"
#: A message larger than the kernel may send: the relay between the sockets cut it (``relay.CUT``).
OVERSIZED = "oversized"
#: A part nested too deep to be read at all (``jsonbytes.TooDeep``): an output message so is
#: kept as a note in its place (see ``Replies``), anything else dropped.
TOO_DEEP = "too_deep"


class BadMessage(ValueError):
    """Not a kernel message we can read (``MALFORMED``, ``TOO_DEEP``) or not signed with the sandbox's key
    (``BAD_SIGNATURE``)."""

    def __init__(self, reason: str, detail: str, parent_id: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        #: For ``OVERSIZED``: the request it answered, if that part arrived before the cut ("": unknown).
        self.parent_id = parent_id


def _object(part: Buffer, what: str) -> dict[str, Any]:
    """One JSON part that must be an object."""
    try:
        value = jsonbytes.loads(part)
    except jsonbytes.TooDeep:
        raise BadMessage(TOO_DEEP, f"the {what} is nested too deep to be read") from None
    except ValueError:  # bad JSON or bad UTF-8
        raise BadMessage(MALFORMED, f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadMessage(MALFORMED, f"the {what} is not a JSON object")
    return value


class Message:
    __slots__ = ("parts", "header", "parent_header", "_content")

    def __init__(self, parts: list[Buffer], header: dict[str, Any], parent_header: dict[str, Any]) -> None:
        self.parts = parts
        self.header = header
        self.parent_header = parent_header
        self._content: dict[str, Any] | None = None

    @property
    def msg_type(self) -> str:
        return str(self.header["msg_type"])

    @property
    def parent_id(self) -> str:
        return str(self.parent_header.get("msg_id", ""))

    @property
    def content(self) -> dict[str, Any]:
        """The parsed content; ``BadMessage`` if it is not a JSON object."""
        if self._content is None:
            self._content = _object(self.parts[4], "content")
        return self._content

    def full(self) -> dict[str, Any]:
        """The message as jupyter_client represents it (dates left as the kernel wrote them)."""
        return {
            "header": self.header,
            "parent_header": self.parent_header,
            "metadata": _object(self.parts[3], "metadata"),
            "content": self.content,
            "buffers": self.parts[5:],
            "msg_id": self.header.get("msg_id"),
            "msg_type": self.msg_type,
        }


def decode(session: Session, frames: Sequence[Buffer], verified: Callable[[list[Buffer]], bool] | None = None) -> Message:
    """The message in ``frames`` (identities first; a large part may be a view of the frame
    received), or ``BadMessage``. The signature is checked first (unless ``verified`` says these
    very parts were, with this session's key)."""
    if frames and len(frames[-1]) == len(CUT) and bytes(frames[-1]) == CUT:
        raise BadMessage(OVERSIZED, "larger than a kernel may send: cut by the gateway's relay", _parent_of_cut(frames))
    try:
        parts = list(frames[frames.index(DELIM) + 1:])
    except ValueError:
        raise BadMessage(MALFORMED, "no delimiter") from None
    if len(parts) < 5:
        raise BadMessage(MALFORMED, f"{len(parts)} parts, at least 5 expected")
    if session.auth is None:
        raise BadMessage(BAD_SIGNATURE, "no key to check the signature with")
    if not (verified is not None and verified(parts)) and not hmac.compare_digest(parts[0], session.sign(parts[1:5])):
        raise BadMessage(BAD_SIGNATURE, "not signed with the sandbox's key")
    header = _object(parts[1], "header")
    parent_header = _object(parts[2], "parent header")
    if not isinstance(header.get("msg_type"), str) or not isinstance(parent_header.get("msg_id", ""), str):
        raise BadMessage(MALFORMED, "the header has no msg_type, or the parent's msg_id is not a string")
    return Message(parts, header, parent_header)


def _parent_of_cut(frames: Sequence[Buffer]) -> str:
    """The parent ``msg_id`` in what is left of a cut message, if its parent header is there (it
    cannot be verified: the signature covers parts cut off; it only says whose output was lost)."""
    try:
        parent_header = _object(frames[list(frames).index(DELIM) + 3], "parent header")
    except (ValueError, IndexError):  # (BadMessage too)
        return ""
    msg_id = parent_header.get("msg_id")
    return msg_id if isinstance(msg_id, str) else ""


def _same(a: Buffer, b: Buffer) -> bool:
    """Whether two parts hold the same bytes. (``==`` on a memoryview compares item by item, a
    hundred times slower than ``bytes.startswith``'s memcmp; two views are taken as different.)"""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    if isinstance(a, bytes):
        return a.startswith(b)
    return isinstance(b, bytes) and b.startswith(a)


#: Signed parts at least this large (bytes) are verified once for all copies of a message;
#: below it, comparing copies saves nothing worth the bookkeeping.
VERIFIED_LARGE = 1 << 18
#: At most this many bytes of verified messages are kept for their copies, each for at most
#: ``VERIFIED_FOR`` seconds (a copy not in by then has its signature checked again). Per sandbox,
#: and filled while a Jupyter socket lags behind the gateway's own reader: 32 MiB holds a 10 MB
#: table's copies (128 MiB let a flood to a stalled client add ~200 MiB to the gateway's peak).
VERIFIED_BYTES = 1 << 25
VERIFIED_FOR = 2.0


class MessageGate:
    """What every message from one sandbox's kernel passes before anything reads or relays it.

    A message that is not a kernel message, or not signed with this sandbox's key (say, one that
    code in the sandbox forged, or one from another tenant's kernel), is dropped and counted.
    Drops are logged at most once per ``log_interval`` seconds, with their count, so a kernel
    flooding its sockets with garbage cannot flood the log.
    """

    def __init__(self, sandbox_id: str, session: Session, *, dropped: Counter | None = None,
                 log_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.sandbox_id = sandbox_id
        #: The kernel manager's own session: its key is the sandbox's (loaded again at re-attach).
        self.session = session
        self.dropped = dropped
        self.log_interval = log_interval
        self.clock = clock
        #: Every message dropped so far.
        self.drops = 0
        self._unreported: dict[str, int] = {}
        self._quiet_until = float("-inf")
        #: How many more copies of each iopub message come in beside the first (``copies_more``).
        self._more_copies = 0
        #: Large iopub messages verified while more copies are on their way: signature ->
        #: (the key's ``Session.auth``, signed parts, copies still to come, when it is forgotten).
        self._verified: OrderedDict[Buffer, tuple[Any, list[Buffer], int, float]] = OrderedDict()
        self._verified_bytes = 0
        self._forgetting: asyncio.TimerHandle | None = None
        #: Copies admitted as a message verified before (their signature not computed again).
        self.copies_verified = 0

    def admit(self, channel: str, frames: Sequence[Buffer], lost: Callable[[str], None] | None = None) -> Message | None:
        """The decoded message, or None if it was dropped (then, if it was cut for its size, ``lost``
        is told the parent ``msg_id`` it had, or "" if that was cut off too)."""
        try:
            if channel != "iopub" or not (self._more_copies or self._verified):
                return decode(self.session, frames)
            copies = self.copies_verified
            message = decode(self.session, frames, self._seen)
            if self.copies_verified == copies:  # (verified just now, not a copy)
                self._remember(message.parts)
            return message
        except BadMessage as bad:
            self.drop(channel, bad)
            if lost is not None and bad.reason == OVERSIZED:
                lost(bad.parent_id)
            return None

    def copies_more(self, count: int) -> None:
        """Note that each iopub message now reaches the gateway ``count`` more times (a Jupyter
        channels socket subscribed: 1; it closed: -1). While some do, a large one's signature is
        checked once for all its copies."""
        self._more_copies = max(0, self._more_copies + count)

    def _seen(self, parts: list[Buffer]) -> bool:
        """Whether ``parts`` are a copy of a large message verified with the current key (counted)."""
        self._forget_expired()
        entry = self._verified.get(parts[0])
        if entry is None:
            return False
        auth, signed, left, forget_at = entry
        if auth is not self.session.auth or not all(_same(a, b) for a, b in zip(parts[:5], signed)):
            return False
        if left > 1:
            self._verified[parts[0]] = (auth, signed, left - 1, forget_at)
        else:
            self._forget(parts[0])
        self.copies_verified += 1
        return True

    def _remember(self, parts: list[Buffer]) -> None:
        """Keep a large message just verified for its copies still to come (if more come), within
        ``VERIFIED_BYTES`` and ``VERIFIED_FOR`` seconds (a socket may miss it: not subscribed yet)."""
        self._forget_expired()
        size = sum(len(part) for part in parts[1:5])
        if not self._more_copies or size < VERIFIED_LARGE or size > VERIFIED_BYTES or parts[0] in self._verified:
            return
        while self._verified and self._verified_bytes + size > VERIFIED_BYTES:
            self._forget(next(iter(self._verified)))
        self._verified[parts[0]] = (self.session.auth, parts[:5], self._more_copies, self.clock() + VERIFIED_FOR)
        self._verified_bytes += size
        if self._forgetting is None:
            try:
                self._forgetting = asyncio.get_running_loop().call_later(VERIFIED_FOR, self._forget_stale)
            except RuntimeError:  # no loop (a unit test): forgotten at a later admit
                pass

    def _forget(self, signature: Buffer) -> None:
        _, parts, _, _ = self._verified.pop(signature)
        self._verified_bytes -= sum(len(part) for part in parts[1:5])

    def _forget_expired(self) -> None:
        """Drop what is past its time (a copy that never came). The oldest come first."""
        now = self.clock()
        while self._verified and next(iter(self._verified.values()))[3] <= now:
            self._forget(next(iter(self._verified)))

    def _forget_stale(self) -> None:
        """``_forget_expired`` on a timer, so a quiet kernel holds nothing for long."""
        self._forgetting = None
        self._forget_expired()
        if self._verified:
            self._forgetting = asyncio.get_running_loop().call_later(VERIFIED_FOR, self._forget_stale)

    def outran(self) -> None:
        """Count an output message dropped for arriving too fast (its execution notes it; not logged)."""
        if self.dropped is not None:
            self.dropped.labels(reason=OUTRAN).inc()

    def drop(self, channel: str, bad: BadMessage) -> None:
        """Count a message that failed a check (also for checks made after ``admit``, on content)."""
        self.drops += 1
        if self.dropped is not None:
            self.dropped.labels(reason=bad.reason).inc()
        self._unreported[bad.reason] = self._unreported.get(bad.reason, 0) + 1
        now = self.clock()
        if now < self._quiet_until:
            return
        counts = ", ".join(f"{count} {reason}" for reason, count in sorted(self._unreported.items()))
        log.warning("sandbox %s: dropped kernel messages (%s), the last one on %s: %s; "
                    "further drops are logged at most every %g s", self.sandbox_id, counts, channel,
                    bad.detail, self.log_interval)
        self._unreported.clear()
        self._quiet_until = now + self.log_interval
