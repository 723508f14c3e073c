"""What is left of sandboxes nobody runs any more: their containers, runtime directories and saved states.

    await clear_orphans(store=store, launcher=launcher, snapshots=snapshots, me=replica.id,
                        held=manager_ids, dead_only=False)

Several replicas share one engine and one store, and other gateways (with stores of their own)
may share the engine too, so "not held here" is never enough to remove something. Kernels
(containers) and their directories are named by *runtime id*: a sandbox's own id, or that of the
warm-pool sandbox it was resumed on (``Sandbox.runtime_id``). A container goes only if no live
sandbox of *our* store runs under its runtime id and either the record of that id has ended, or
there is none and the container was started by this replica (at start-up: a warm-pool container
of its last run) or by a replica of our store that is no longer alive (its pool). A container
that a live record runs under belongs to its lease's holder, or to whoever takes it over; one
started by a replica our store never saw belongs to another gateway altogether. Directories and
saved states follow the records alone: they go once no live record needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from gateway.provisioners.launcher import KernelLauncher, LeftKernel
from gateway.sandboxes.leases import LeaseKeeper
from gateway.sandboxes.model import ENDED
from gateway.sandboxes.snapshots import SandboxSnapshots
from gateway.store.base import Store

log = logging.getLogger(__name__)

PARTIAL = ".partial"


async def _over(store: Store, runtime_id: str, borrowed: Collection[str]) -> bool:
    """Whether nothing live runs under ``runtime_id``: no live sandbox resumed on it, and its own
    record absent or ended."""
    if runtime_id in borrowed:
        return False
    record = await store.get_sandbox(runtime_id) if runtime_id else None
    return record is None or record["status"] in ENDED


async def orphaned_kernel(kernel: LeftKernel, *, store: Store, me: str, replicas: dict[str, bool],
                          held: Collection[str], borrowed: Collection[str], dead_only: bool) -> bool:
    """Whether a kernel found on the engine may be removed (see the module's docstring)."""
    if kernel.sandbox_id in held:
        return False
    ours = kernel.instance == me and not dead_only
    if not ours and replicas.get(kernel.instance, True):
        return False  # a live replica's, or another gateway's (a replica our store never saw)
    return await _over(store, kernel.sandbox_id, borrowed)


async def clear_orphans(*, store: Store, leases: LeaseKeeper, launcher: KernelLauncher,
                        snapshots: SandboxSnapshots | None, held: Collection[str], paused: Collection[str] = (),
                        dead_only: bool) -> None:
    """Remove the orphans. ``held``: the sandboxes this replica holds (and their runtime ids), ``paused`` those paused
    (their saved states stay; any other saved state of a sandbox held here is a leftover).
    ``dead_only``: only what replicas that died left, not this one's own, which may be mid-start
    (at start-up nothing of ours is: then everything)."""
    replicas = await leases.known_replicas()
    borrowed = await store.runtime_ids_in_use()
    for kernel in await launcher.left_kernels():
        if await orphaned_kernel(kernel, store=store, me=leases.me, replicas=replicas, held=held,
                                 borrowed=borrowed, dead_only=dead_only):
            log.warning("sandbox %s: removing its orphaned container %s (started by %s)", kernel.sandbox_id or "?",
                        kernel.ref[:12], kernel.instance or "?")
            try:
                await launcher.remove_left(kernel)
            except Exception:
                log.warning("sandbox %s: could not remove its orphaned container", kernel.sandbox_id, exc_info=True)
    if dead_only:
        return
    for runtime_id in launcher.sandbox_dirs():
        if runtime_id not in held and await _over(store, runtime_id, borrowed):
            launcher.remove_sandbox_dir(runtime_id)
    if snapshots is not None:
        for name in snapshots.entries():
            sandbox_id = name.removesuffix(PARTIAL)
            if sandbox_id in held:
                leftover = name.endswith(PARTIAL) or sandbox_id not in paused  # a pause or resume cut short
            else:
                leftover = await _over(store, sandbox_id, ())  # (another replica's may be pausing right now)
            if leftover:
                log.info("removing saved state %s: no paused sandbox has it", name)
                snapshots.remove_entry(name)
