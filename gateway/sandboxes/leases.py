"""Leases: which replica holds each sandbox's runtime (its kernel connection, its queue of executions).

    keeper = LeaseKeeper(store=store, replica=replica, parent=app)
    await keeper.start()                       # the first heartbeat; then one every ``interval``
    keeper.claim_new(sandbox.id)               # a new sandbox: ours (commits with its record, no await between)
    await keeper.claim(sandbox_id)             # take one over: True if nobody alive holds it
    holder = await keeper.holder(sandbox_id)   # None: nobody alive but us; else who, and where
    await keeper.stop(release=True)            # others may take our sandboxes at once

One replica at a time holds a sandbox: the replica in the store's ``leases`` row, while its
heartbeat (``replicas`` row, renewed every ``interval`` seconds) has not lapsed ``timeout``
seconds after the last one, by the database's clock. One heartbeat renews every lease a
replica holds. When a replica dies, its heartbeat lapses and its sandboxes become *unheld*:
another replica claims each (a conditional write: one of them wins) and re-attaches its kernel
(``SandboxManager``). A replica whose own heartbeat lapsed (the store was out of reach, the
process stalled) learns it at its next beat (``lapsed`` is called): some of its sandboxes may
have been taken meanwhile, and it must let go of those.

With one gateway on SQLite, the embedded default, there is one replica: it holds every lease,
and takes its own back after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from gateway.replica import Replica
from gateway.store.base import Store

log = logging.getLogger(__name__)

#: A lease of no sandbox: the replica holding it is the one delivering webhooks (``WebhookSender``).
WEBHOOKS_LEASE = "webhooks"


@dataclasses.dataclass(frozen=True)
class Holder:
    """Another replica holding a sandbox: where to forward its requests."""

    replica_id: str
    address: str
    #: Whether its heartbeat is current; seconds until it lapses (negative: lapsed that long ago).
    alive: bool
    expires_in: float


def preferred(sandbox_id: str, replicas: list[str]) -> str:
    """The replica that should take an unheld sandbox over (rendezvous hashing: the load spreads
    over the live replicas, and each sandbox has one first choice that every replica agrees on)."""
    return max(replicas, key=lambda r: hashlib.sha1(f"{sandbox_id}/{r}".encode()).digest())


class LeaseKeeper(LoggingConfigurable):
    timeout = Float(
        5.0, help="Seconds a replica's leases outlive its last heartbeat: after that, another replica takes its "
        "sandboxes over (re-attaching their kernels). Same value on every replica."
    ).tag(config=True)
    interval = Float(
        0.0, help="Seconds between two heartbeats, and between two looks for sandboxes nobody holds "
        "(0: a third of the lease timeout)."
    ).tag(config=True)

    def __init__(self, *, store: Store, replica: Replica, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.replica = replica
        #: Called (and awaited) when a heartbeat finds the previous one had lapsed.
        self.lapsed: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._beating = False

    @property
    def me(self) -> str:
        return self.replica.id

    @property
    def period(self) -> float:
        return self.interval if self.interval > 0 else self.timeout / 3

    async def start(self) -> None:
        """Beat once (awaited: from now on this replica is alive), then every ``period`` seconds."""
        await self.store.beat(self.me, self.replica.address, self.timeout)
        self._beating = True
        self._task = asyncio.create_task(self._beat(), name="lease-heartbeat")

    async def stop(self, *, release: bool) -> None:
        """Stop beating; ``release``: end the heartbeat now, so others take our sandboxes at once (else
        they wait for it to lapse, or for this replica to start again and take them back)."""
        self._beating = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if release:
            await self.store.stop_beating(self.me)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                still_alive = await self.store.beat(self.me, self.replica.address, self.timeout)
            except Exception:  # (the store holds and retries its writes; this only fails on a bug)
                log.exception("replica %s: heartbeat failed", self.me)
                continue
            if not still_alive and self._beating:
                log.warning("replica %s: its heartbeat had lapsed (over %g s without one): other replicas may "
                            "have taken some of its sandboxes", self.me, self.timeout)
                if self.lapsed is not None:
                    try:
                        await self.lapsed()
                    except Exception:
                        log.exception("replica %s: could not let go of the sandboxes it lost", self.me)

    # -- leases ----------------------------------------------------------------------------------

    def claim_new(self, sandbox_id: str) -> Awaitable[bool]:
        """The lease of a sandbox being made (hand it over before its record, with no ``await`` between:
        they commit together, so no replica ever sees the record unleased)."""
        return self.store.claim_lease(sandbox_id, self.me)

    async def claim(self, sandbox_id: str) -> bool:
        """Take the lease if nobody alive holds it (or we do); whether we hold it now."""
        return await self.store.claim_lease(sandbox_id, self.me)

    def drop(self, sandbox_id: str) -> Awaitable[object]:
        """The sandbox ended: its lease goes (only if it is ours)."""
        return self.store.drop_lease(sandbox_id, self.me)

    async def holder(self, sandbox_id: str) -> Holder | None:
        """Who holds the sandbox if not us: None when we do or nobody does."""
        lease = await self.store.get_lease(sandbox_id)
        if lease is None or lease["holder"] == self.me:
            return None
        return Holder(lease["holder"], lease["address"], lease["alive"], lease["expires_in"])

    async def held(self) -> set[str]:
        """The sandboxes whose lease names this replica."""
        return set(await self.store.leases_of(self.me))

    async def live_replicas(self) -> list[str]:
        """The ids of the replicas alive now (this one included)."""
        return [r["id"] for r in await self.store.list_replicas() if r["alive"]]

    async def known_replicas(self) -> dict[str, bool]:
        """Every replica of this store ever seen, and whether it is alive."""
        return {r["id"]: bool(r["alive"]) for r in await self.store.list_replicas()}
