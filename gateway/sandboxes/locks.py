"""One lifecycle operation at a time per sandbox: restart, delete (and pause, resume) never overlap.

    locks = LifecycleLocks()
    async with locks.hold(sandbox.id, "restarting"):   # waits for the operation under way, if any
        ...                                            # replace, stop or save the sandbox's kernel
    locks.refuse_while_busy(sandbox.id, "interrupt")   # SandboxBusy (409) while one is under way

An operation that replaces or stops a kernel holds the sandbox's lock for its whole length, so
two of them run one after the other and each sees what the previous one left (a restart after a
delete finds the sandbox gone). A quick action that must not wait behind a long one (interrupt)
is refused instead: signalling a kernel that is being started kills it. A lock exists only while
it is held or awaited, so nothing grows with the number of sandboxes ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from gateway.errors import SandboxBusy


@dataclasses.dataclass
class _Slot:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    #: Holders and waiters: the slot is dropped when none are left.
    users: int = 0
    #: What the holder is doing ("restarting", "being deleted", ...), for error messages.
    doing: str | None = None


class LifecycleLocks:
    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    @contextlib.asynccontextmanager
    async def hold(self, sandbox_id: str, doing: str) -> AsyncIterator[None]:
        """Run the block as the only lifecycle operation of ``sandbox_id`` (after any under way)."""
        slot = self._slots.setdefault(sandbox_id, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                slot.doing = doing
                try:
                    yield
                finally:
                    slot.doing = None
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[sandbox_id]

    def under_way(self, sandbox_id: str) -> str | None:
        """What the operation holding ``sandbox_id``'s lock is doing, or None."""
        slot = self._slots.get(sandbox_id)
        return slot.doing if slot is not None else None

    def refuse_while_busy(self, sandbox_id: str, action: str) -> None:
        """Raise ``SandboxBusy`` if a lifecycle operation of ``sandbox_id`` is under way."""
        doing = self.under_way(sandbox_id)
        if doing is not None:
            raise SandboxBusy(f"cannot {action} sandbox {sandbox_id} while it is {doing}; try again when that is done")
