"""SandboxManager: every sandbox's lifecycle, ownership, quotas, and the executions run in it.

    manager = SandboxManager(store=store, launcher=launcher, policy=policy, parent=app)
    await manager.start()                                  # recover what the store remembers
    sandbox = await manager.create("alice", resources={"cpu": 1})
    execution = await manager.execute(sandbox.id, "alice", "x = 41; x + 1")
    await manager.stop()

Ownership: a sandbox is visible only to its owner (and to the ``admin`` user); anyone else gets
``SandboxNotFound`` exactly as for an id that does not exist. Executions run in tasks this
manager owns, so a client that goes away loses nothing: the execution runs to its end and is
stored.

Acknowledged means durable: a request that changes something is answered only after the store
has committed the change, and while the store cannot commit, new work is refused
(``StoreUnavailable``) instead of being accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from traitlets import Bool, Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from gateway import jsonbytes, timestamps
from gateway.errors import (
    ExecutionNotFound,
    GatewayError,
    InvalidRequest,
    QuotaExceeded,
    SandboxBusy,
    SandboxHeldElsewhere,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SandboxStartFailed,
    StoreUnavailable,
    TooManyQueued,
    ShuttingDown,
)
from gateway.execution.connection import ConnectTimeout, KernelGone
from gateway.events import model as events
from gateway.events.log import EventLog
from gateway.execution.executor import OutputCaps
from gateway.execution.feed import ExecutionFeed
from gateway.execution.model import Execution, ExecutionStatus, execution_error
from gateway.metrics import GatewayMetrics
from gateway.provisioners.launcher import KernelLauncher
from gateway.provisioners.usage import Usage
from gateway.replica import Replica
from gateway.sandboxes import reports
from gateway.sandboxes.contexts import Context, DefaultContext, SandboxContexts, default_context, normalize_language
from gateway.sandboxes.isolation import IsolationPolicy
from gateway.sandboxes.kernels import KernelRegistry
from gateway.sandboxes.leases import WEBHOOKS_LEASE, Holder, LeaseKeeper, preferred
from gateway.sandboxes.lifetimes import LifetimePolicy
from gateway.sandboxes.limits import ResourcePolicy
from gateway.sandboxes.locks import LifecycleLocks
from gateway.sandboxes.model import DEFAULT_FIGURE_FORMATS, ENDED, Sandbox, SandboxStatus
from gateway.sandboxes.orphans import clear_orphans
from gateway.sandboxes.pool import WarmPool
from gateway.sandboxes.quotas import UserQuotas
from gateway.sandboxes.reaper import EXPIRED, IDLE, SandboxReaper
from gateway.sandboxes.restarts import RestartBudget
from gateway.sandboxes.runtime import RuntimeSettings, SandboxRuntime
from gateway.sandboxes.snapshots import SandboxSnapshots
from gateway.store.base import Store
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)

#: ``metadata["started_by"]`` of sandboxes started through the Jupyter kernel API (``/api/kernels``).
STARTED_BY_JUPYTER = "jupyter"

#: Seconds each part of a shutdown may take (closing one sandbox, ending the executions, ...).
STOP_WITHIN = 20.0

P = ParamSpec("P")
R = TypeVar("R")


def stop_waits_for(
    method: Callable[Concatenate[SandboxManager, P], Awaitable[R]],
) -> Callable[Concatenate[SandboxManager, P], Coroutine[Any, Any, R]]:
    """A manager method that starts a kernel and adopts it: refused once stopping, and awaited by
    ``stop`` (bounded) before it closes the sandboxes, so nothing is adopted after they closed."""

    @functools.wraps(method)
    async def run(self: SandboxManager, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._refuse_when_stopping()
        self._operations += 1
        self._no_operations.clear()
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._operations -= 1
            if not self._operations:
                self._no_operations.set()

    return run


LIVE = [str(SandboxStatus.CREATING), str(SandboxStatus.RUNNING), str(SandboxStatus.FAILED),
        str(SandboxStatus.TERMINATING)]
#: Sandboxes some replica must hold: the live ones, and the paused (their saved state is looked after).
HELD = [*LIVE, str(SandboxStatus.PAUSED)]
#: Why the executions a sandbox had in flight failed when it was taken back: its own gateway
#: restarted, or the replica that held it died and this one took it over.
TAKEN_BACK = {
    "gateway_restarted": ("GatewayRestarted", "the gateway stopped before this execution finished"),
    "replica_lost": ("ReplicaLost", "the gateway replica running this sandbox stopped before this execution "
                     "finished; another replica took the sandbox over (its kernel and variables are kept)"),
}
#: What a sandbox taken from the warm pool gets from the request that claimed it.
REQUESTED_FIELDS = ("owner", "resources", "env", "metadata", "expires_at", "idle_timeout", "on_idle", "auto_resume",
                    "template", "access_token")


def start_failure(exc: BaseException) -> str:
    """Why a kernel did not start, as a client may be told: never the internal error's own text
    (a Docker error can name host paths and the engine's internals); the log has that."""
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, KernelGone):
        return f"its kernel stopped before it answered ({exc.reason})"
    if isinstance(exc, ConnectTimeout):
        return "its kernel did not answer in time"
    return "an internal error (the gateway's log has the details)"


@dataclasses.dataclass
class RunningExecution:
    """An execution that was accepted: its record, its live event feed, and its completion."""

    execution: Execution
    feed: ExecutionFeed
    #: Once it has ended and its record is durable.
    done: asyncio.Future[Execution] = dataclasses.field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: The finished execution as the API shows it, made once for every client that asks.
    final: dict[str, Any] | None = None
    #: ``final``, as soon as it is made: the record may not be durable yet (``done`` says when).
    ended: asyncio.Future[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class SandboxManager(LoggingConfigurable):
    admin_user = Unicode("admin", help="The user who may see and manage every sandbox.").tag(config=True)
    max_queued_executions = Int(
        100, help="Most executions one sandbox may have waiting behind the one it runs (0: no limit); "
        "beyond, 429 too_many_queued with Retry-After."
    ).tag(config=True)
    max_output_bytes = Int(
        5 << 20, help="Largest single output kept; a larger one is replaced by a note."
    ).tag(config=True)
    max_execution_output_bytes = Int(
        10 << 20, help="Most output kept per execution; the rest is dropped behind a note."
    ).tag(config=True)
    interrupt_grace = Float(
        10.0, help="Seconds a timed-out execution has to stop after an interrupt before the kernel is restarted."
    ).tag(config=True)
    idle_grace = Float(
        10.0, help="Seconds of kernel silence after an execution's reply that end it even without the kernel's "
        "idle status (its iopub socket dropped it in a flood; the execution notes that output may be lost), "
        "and after its idle status without a reply (ipykernel sends none when an interrupt lands before the "
        "code: the execution ends cancelled if interrupted, else failed)."
    ).tag(config=True)
    restart_jupyter_kernels = Bool(
        True, help="Restart a kernel started through the Jupyter kernel API (/api/kernels) as soon as it "
        "dies, as Jupyter Server does (its WebSockets get status: restarting, then the new kernel). Other "
        "sandboxes stay failed until restarted (their WebSockets get status: dead)."
    ).tag(config=True)
    jupyter_restart_limit = Int(
        5, help="Restarts in a row of a Jupyter kernel that keeps dying before it is left dead (status: dead), "
        "as Jupyter Server's KernelRestarter.restart_limit."
    ).tag(config=True)
    jupyter_stable_start_time = Float(
        10.0, help="Seconds a restarted Jupyter kernel must stay up for its next death to start a new row of "
        "restarts (Jupyter Server's KernelRestarter.stable_start_time)."
    ).tag(config=True)
    usage_interval = Float(
        15.0, help="Seconds between two samples of all sandboxes' usage for /metrics (0: none)."
    ).tag(config=True)
    store_shutdown_wait = Float(
        10.0, help="Seconds shutdown waits for the records of the sandboxes it ends, if the store is failing."
    ).tag(config=True)
    keep_on_shutdown = Bool(
        False, help="Leave sandbox kernels running when the gateway stops, to re-attach at the next start."
    ).tag(config=True)
    orphan_interval = Float(
        60.0, help="Seconds between two looks for containers (pods) that replicas which died left behind, such as "
        "their warm pools' (sandboxes they held are taken over instead, within a lease period)."
    ).tag(config=True)
    hand_over_on_shutdown = Bool(
        True, help="When other replicas sharing the store are alive at shutdown, leave the sandboxes running and "
        "free their leases, so those replicas take them over at once (instead of ending them)."
    ).tag(config=True)

    def __init__(self, *, store: Store, launcher: KernelLauncher, policy: ResourcePolicy,
                 lifetimes: LifetimePolicy | None = None, snapshots: SandboxSnapshots | None = None,
                 quotas: UserQuotas | None = None, events: EventLog | None = None,
                 metrics: GatewayMetrics | None = None, isolation: IsolationPolicy | None = None,
                 leases: LeaseKeeper | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.isolation = isolation or IsolationPolicy(parent=self)
        #: This replica's leases: which sandboxes it runs, and who runs the others.
        self.leases = leases or LeaseKeeper(store=store, replica=Replica(str(uuid.uuid4())), parent=self)
        self.leases.lapsed = self._let_go
        #: Sandboxes being taken over (their leases claimed, their kernels being re-attached).
        self._taking: dict[str, asyncio.Task[None]] = {}
        #: Unheld sandboxes this replica is not the first choice for, seen at the last look.
        self._passed_over: set[str] = set()
        #: Paused sandboxes of gone replicas whose saved state is not here (warned about once).
        self._unreachable: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics = metrics or GatewayMetrics()
        self.launcher = launcher
        self.policy = policy
        self.lifetimes = lifetimes or LifetimePolicy(parent=self)
        self.quotas = quotas or UserQuotas(store=store, parent=self)
        #: The outbox's live side: woken whenever a change with events was handed to the store.
        self.events = events or EventLog(store=store, parent=self)
        #: Where paused sandboxes keep their files and variables (None: pausing is not possible).
        self.snapshots = snapshots
        self.settings = RuntimeSettings(
            caps=OutputCaps(self.max_output_bytes, self.max_execution_output_bytes),
            interrupt_grace=self.interrupt_grace,
            idle_grace=self.idle_grace,
            connect_timeout=launcher.startup_timeout,
        )
        # A message larger than what an execution's replies may hold waiting would be dropped
        # there anyway: the kernel's relays cut it before the gateway holds any more of it.
        launcher.max_message_bytes = self.settings.caps.max_pending_bytes
        self._sandboxes: dict[str, Sandbox] = {}
        self._runtimes: dict[str, SandboxRuntime] = {}
        #: The same kernels as ``_runtimes``, for jupyter_server's kernel WebSocket code.
        self.kernels = KernelRegistry(parent=self)
        self._running: dict[str, RunningExecution] = {}
        #: The sandboxes' other kernels (contexts), and one lock per sandbox for starting default ones.
        self.contexts = SandboxContexts(launcher, self.settings)
        self._context_starts: dict[str, asyncio.Lock] = {}
        #: Restart, delete (and pause, resume) of one sandbox run one at a time.
        self.locks = LifecycleLocks()
        #: Automatic restarts of Jupyter kernels that died, per row of deaths.
        self.autorestarts = RestartBudget(self.jupyter_restart_limit, self.jupyter_stable_start_time)
        #: Sandboxes whose Jupyter kernel died and is to be restarted: set once that restart is over
        #: (from the death on, before its task holds the lifecycle lock).
        self._autorestarts_over: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Kernels being started for a sandbox (create, pool): stop cancels them.
        self._starts: set[asyncio.Task[SandboxRuntime]] = set()
        #: Since when the pool has waited behind ``_starts`` (see ``saturated``).
        self._held_by_starts_since: float | None = None
        self._stopping = False
        #: Creates, resumes and restarts under way (they may be adopting a kernel); see ``stop_waits_for``.
        self._operations = 0
        self._no_operations = asyncio.Event()
        self._no_operations.set()
        self._active: set[str] = set()
        self._activity_timer: asyncio.TimerHandle | None = None
        #: Open /stream WebSockets per sandbox (activity: a sandbox with one is never idle).
        self._sockets: Counter[str] = Counter()
        #: sandbox id -> its accepted executions not finished yet (the one running included).
        self._unfinished: Counter[str] = Counter()
        self.reaper = SandboxReaper(sandboxes=self._sandboxes.values, active=self.is_active, act=self.reap,
                                    parent=self)
        self.pool = WarmPool(start=self._start_pooled, dispose=self._dispose_pooled, saturated=self.saturated,
                             profile=policy.defaults(), isolation=self._default_isolation(),
                             exact_pids=not launcher.live_pids(self._default_isolation()), parent=self)
        self.metrics.watch(live=lambda: len(self._runtimes), busy=self.busy,
                           pool_ready=lambda: self.pool.describe()["ready"])
        self.metrics.watch_paused(lambda: self.counts()["paused"])

    def _default_isolation(self) -> str | None:
        """What a sandbox that asks for no isolation gets here (None: local processes)."""
        return str(self.isolation.default) if self.launcher.isolates else None

    # -- lifecycle of the manager ----------------------------------------------------------------

    async def start(self) -> None:
        """Take back what this replica held when it last ran, and what no replica alive holds (their kernels
        re-attached, or their records ended); clear what nobody holds any more; then serve."""
        await self.leases.start()
        for sandbox_id in sorted(await self.leases.held() - {WEBHOOKS_LEASE}):
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record["status"] in ENDED:
                await self.leases.drop(sandbox_id)
            else:
                await self._take_back(Sandbox.from_record(record), "gateway_restarted")
        await self._take_over_unheld()
        await self._taken()
        await clear_orphans(store=self.store, leases=self.leases, launcher=self.launcher, snapshots=self.snapshots,
                            held=self._held_ids(), paused=self._paused_here(), dead_only=False)
        self.pool.start()
        self.reaper.start()
        self._sweeper = asyncio.create_task(self._watch_leases(), name="lease-sweep")
        if self.usage_interval > 0:
            self._spawn(self._sample_usage(), name="sample-usage")

    def _held_ids(self) -> set[str]:
        """The ids of the sandboxes this replica holds, and the runtime ids their kernels run under."""
        return {*self._sandboxes, *(s.runtime_id for s in self._sandboxes.values())}

    def _paused_here(self) -> set[str]:
        return {s.id for s in self._sandboxes.values() if s.status == SandboxStatus.PAUSED}

    async def _take_back(self, sandbox: Sandbox, reason: str) -> None:
        """Run here a sandbox whose lease this replica holds but whose runtime it has not: re-attach its
        kernel (or end its record if the kernel is gone), and fail the executions it had in flight (``reason``:
        ``gateway_restarted``, or ``replica_lost`` when another replica held it)."""
        unfinished = await self.store.list_unfinished_executions(sandbox.id)
        for record in unfinished:
            execution = Execution.from_record(record)
            execution.status = ExecutionStatus.FAILED
            execution.finished_at = execution.finished_at or timestamps.now()
            execution.error = execution_error(reason, *TAKEN_BACK[reason])
            await self._put_execution(execution, sandbox.owner)
        if sandbox.status == SandboxStatus.PAUSED:
            if self.snapshots is None or not self.snapshots.exists(sandbox.id):
                log.error("sandbox %s: paused, but its saved state is not on this gateway's disk", sandbox.id)
                await self._end(sandbox, "snapshot_lost")
            else:
                self._sandboxes[sandbox.id] = sandbox
            return
        # (the store may still say queued of the one that ran: that is written first)
        await self._recover(sandbox, busy=bool(unfinished), reason=reason)

    async def _recover(self, sandbox: Sandbox, *, busy: bool = False, reason: str = "gateway_restarted") -> None:
        if sandbox.expires_at is None:  # recorded before sandboxes had lifetimes
            sandbox.expires_at = self.lifetimes.expiry(None)
        km = None
        if sandbox.provisioner == self.launcher.resolved and sandbox.status == SandboxStatus.RUNNING:
            try:
                km = await self.launcher.reattach(sandbox)
            except Exception:
                log.exception("sandbox %s: could not re-attach to its kernel", sandbox.id)
        if km is None:
            await self._end(sandbox, reason)
            return
        # The kernel may still run code for a gateway that is gone (``busy``: its record said so; a
        # replica that stopped may have recorded it ended without stopping it): nobody waits for that
        # any more, and until it ends the kernel cannot answer the kernel_info that _connect awaits.
        # (An idle kernel ignores the interrupt.)
        try:
            await km.interrupt_kernel()
        except Exception:
            log.warning("sandbox %s: could not interrupt the re-attached kernel%s", sandbox.id,
                        " (it was running code)" if busy else "", exc_info=True)
        try:
            runtime = await self._connect(sandbox, km)
            moved = sandbox.kernel.get("provisioner", {}).get("sandbox_dir") != str(self.launcher.sandbox_dir(sandbox.runtime_id))
            if moved:  # (taken over: its kernel is reached from this replica's directory now)
                sandbox.kernel = await self.launcher.record(km)
        except Exception:
            log.exception("sandbox %s: re-attached kernel does not answer", sandbox.id)
            await self._end(sandbox, reason)
            return
        self._sandboxes[sandbox.id] = sandbox
        self._adopt(sandbox.id, runtime)
        if moved:
            await self.store.put_sandbox(sandbox.to_record())
        log.info("sandbox %s: re-attached to its kernel", sandbox.id)

    # -- leases: who runs which sandbox --------------------------------------------------------------

    async def _take_over_unheld(self) -> None:
        """Take over the sandboxes nobody alive holds (their replica died, or stopped and let them go):
        each replica takes those it is the first choice for at once, any other after one more look."""
        unheld = [r for r in await self.store.unheld_sandboxes(HELD) if r["id"] not in self._sandboxes]
        passed, self._passed_over = self._passed_over, set()
        if not unheld:
            return
        live = await self.leases.live_replicas() or [self.leases.me]
        for record in unheld:
            sandbox_id = record["id"]
            if preferred(sandbox_id, live) == self.leases.me or sandbox_id in passed:
                self._take_over_soon(sandbox_id)
            else:
                self._passed_over.add(sandbox_id)  # its first choice has one look to take it

    def _take_over_soon(self, sandbox_id: str) -> asyncio.Task[None]:
        task = self._taking.get(sandbox_id)
        if task is None:
            task = self._spawn(self._take_over(sandbox_id), name=f"take-over-{sandbox_id}")
            self._taking[sandbox_id] = task
            task.add_done_callback(lambda _: self._taking.pop(sandbox_id, None))
        return task

    async def _taken(self) -> None:
        """Wait for every take-over under way."""
        await asyncio.gather(*list(self._taking.values()), return_exceptions=True)

    async def _take_over(self, sandbox_id: str) -> None:
        """Claim an unheld sandbox and run it here; nothing if another replica claimed it first, or if it is
        paused and its saved state is not on this replica's disk (its replica may come back with it)."""
        previous = await self.store.get_lease(sandbox_id)
        record = await self.store.get_sandbox(sandbox_id)
        if self._out_of_reach(record, previous):
            return
        if not await self.leases.claim(sandbox_id):
            return
        record = await self.store.get_sandbox(sandbox_id)
        if record is None or record["status"] in ENDED:
            await self.leases.drop(sandbox_id)
            return
        if previous is not None and previous["holder"] != self.leases.me:
            log.warning("sandbox %s: taking it over from replica %s, which is gone", sandbox_id, previous["holder"])
            await self._take_back(Sandbox.from_record(record), "replica_lost")
        else:
            await self._take_back(Sandbox.from_record(record), "gateway_restarted")

    def _out_of_reach(self, record: dict[str, Any] | None, lease: dict[str, Any] | None) -> bool:
        """A paused sandbox of another replica whose saved state is not here (the paused directory is not
        shared): taking it over would lose its state, so it waits for that replica to come back."""
        if record is None or record["status"] != SandboxStatus.PAUSED or lease is None:
            return False
        if lease["holder"] == self.leases.me or (self.snapshots is not None and self.snapshots.exists(record["id"])):
            return False
        if record["id"] not in self._unreachable:
            self._unreachable.add(record["id"])
            log.warning("sandbox %s: paused by replica %s, which is gone, and its saved state is not on this "
                        "replica's disk; it waits for that replica", record["id"], lease["holder"])
        return True

    async def _watch_leases(self) -> None:
        """Every lease period, take over what replicas that died held; now and then, clear what they left."""
        cleared = time.monotonic()
        while True:
            await asyncio.sleep(self.leases.period)
            try:
                await self._take_over_unheld()
                if time.monotonic() - cleared >= self.orphan_interval:
                    cleared = time.monotonic()
                    await clear_orphans(store=self.store, leases=self.leases, launcher=self.launcher,
                                        snapshots=self.snapshots, held=self._held_ids(), dead_only=True)
            except Exception:  # (a store outage, say: the next look tries again)
                log.warning("replica %s: could not look for sandboxes to take over", self.leases.me, exc_info=True)

    async def _let_go(self) -> None:
        """Our heartbeat had lapsed: stop running the sandboxes another replica took meanwhile (their
        kernels are its now: they are left running, and nothing more is written for them here)."""
        held = await self.leases.held()
        for sandbox_id in [s for s in self._sandboxes if s not in held and s not in self._taking]:
            log.warning("sandbox %s: another replica took it over while this one's heartbeat had lapsed", sandbox_id)
            self._sandboxes.pop(sandbox_id, None)
            runtime = self._release(sandbox_id)
            if runtime is not None:
                await runtime.close(stop_kernel=False, reason="replica_lost")

    async def placement(self, sandbox_id: str) -> Holder | None:
        """Where a request for the sandbox is served: None for here, else the replica holding it (the API
        forwards the request to it). A sandbox whose holder is gone is taken over first, then served here."""
        if sandbox_id in self._sandboxes:
            return None  # (the usual case: no I/O)
        taking = self._taking.get(sandbox_id)
        if taking is None:
            lease = await self.store.get_lease(sandbox_id)
            if lease is not None and lease["holder"] != self.leases.me and lease["alive"]:
                return Holder(lease["holder"], lease["address"], True, lease["expires_in"])
            if lease is not None and lease["holder"] == self.leases.me:
                return None
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record["status"] not in HELD:
                return None
            if self._out_of_reach(record, lease):
                assert lease is not None
                raise SandboxHeldElsewhere(sandbox_id, lease["holder"], lease["address"], (
                    f"sandbox {sandbox_id} is paused, and its saved state is on the disk of replica "
                    f"{lease['holder']}, which is not running; it can be resumed once that replica runs again "
                    "(replicas that share --paused-dir resume each other's sandboxes)"))
            taking = self._take_over_soon(sandbox_id)  # unleased, or its holder is gone
        await asyncio.shield(taking)
        if sandbox_id in self._sandboxes:
            return None
        holder = await self.leases.holder(sandbox_id)  # another replica won the race to take it
        return holder if holder is not None and holder.alive else None

    async def _here(self, sandbox: Sandbox) -> Sandbox:
        """``sandbox`` as this replica runs it; ``SandboxHeldElsewhere`` if another replica does."""
        if sandbox.id in self._sandboxes or sandbox.status in ENDED:
            return self._sandboxes.get(sandbox.id, sandbox)
        holder = await self.placement(sandbox.id)
        if holder is not None:
            raise SandboxHeldElsewhere(sandbox.id, holder.replica_id, holder.address)
        return self._sandboxes.get(sandbox.id, sandbox)

    async def stop(self) -> None:
        """Stop every sandbox (or leave the kernels running if ``keep_on_shutdown``), whatever is under way;
        paused ones stay paused.

        No new work is accepted; the pool and the kernels being started stop (their kernels
        too); each sandbox is closed, which ends its running and queued executions, whose
        records their tasks then write. Every step is bounded (``STOP_WITHIN``), so this ends.

        When other replicas are alive (and ``hand_over_on_shutdown``), the sandboxes are left running for
        them instead, and this replica's leases freed: they take the sandboxes over within a lease period.
        """
        self._stopping = True
        if self._sweeper is not None:
            await stop_tasks([self._sweeper], within=STOP_WITHIN, what="lease watch")
        await self.reaper.stop()
        await self.pool.stop()
        await stop_tasks(list(self._starts), within=STOP_WITHIN, what="sandbox starts")
        try:  # creates, resumes, restarts and take-overs end (their kernels adopted, or not): then all are closed
            async with asyncio.timeout(STOP_WITHIN):
                await self._no_operations.wait()
                await self._taken()
        except TimeoutError:
            log.error("%d sandbox operations still under way %g s into the shutdown", self._operations, STOP_WITHIN)
        hand_over = self.hand_over_on_shutdown and await self._others_alive()
        if hand_over:
            log.info("replica %s: leaving %d sandboxes to the other replicas", self.leases.me, len(self._sandboxes))
        elif not self.keep_on_shutdown:
            await self._take_over_left()
        keep = self.keep_on_shutdown or hand_over
        kept = set(self._runtimes) if keep else set()
        if self._activity_timer is not None:
            self._activity_timer.cancel()
        # Written, not awaited: if the store is failing, its close() waits for them a bounded time.
        self._record_activity()
        await self._stop_all(keep=keep)
        if hand_over:
            await self._stop_beating(release=True)
            # The others may have been stopping at the same moment, each leaving its sandboxes to the
            # rest: the one that finds itself last once it let go ends what they all left.
            if not self.keep_on_shutdown and not await self._others_alive():
                log.info("replica %s: the other replicas stopped too: ending what they left", self.leases.me)
                await self._take_over_left()
                kept = set()
                await self._stop_all(keep=False)
        # Their executions ended with them; their tasks store them and say so (done), then every task stops.
        ending = [running.done for running in self._running.values() if not running.done.done()]
        if ending:
            await asyncio.wait(ending, timeout=STOP_WITHIN)
        await stop_tasks(list(self._tasks), within=STOP_WITHIN, what="sandbox manager")
        if not hand_over:
            await self._stop_beating(release=False)
        # A last sweep: a container whose creation was under way when its start was cancelled (never
        # one a live record runs under: those handed over or kept stay).
        try:
            async with asyncio.timeout(STOP_WITHIN):
                await clear_orphans(store=self.store, leases=self.leases, launcher=self.launcher, snapshots=None,
                                    held=kept | set(self._sandboxes) | await self.store.runtime_ids_in_use(),
                                    dead_only=False)
        except Exception:
            log.exception("could not remove what stopped sandboxes left behind")

    async def _stop_all(self, *, keep: bool) -> None:
        """Close every runtime: ``keep``: leave the kernels running, else stop them and end the sandboxes."""
        await asyncio.gather(*(self._stop_sandbox(sandbox_id, keep=keep) for sandbox_id in list(self._runtimes)))

    async def _stop_sandbox(self, sandbox_id: str, *, keep: bool) -> None:
        runtime = self._release(sandbox_id)
        sandbox = self._sandboxes.pop(sandbox_id)
        try:
            async with asyncio.timeout(STOP_WITHIN):
                await self._close_contexts(sandbox, "gateway_shutdown")
        except Exception:
            log.exception("sandbox %s: error while stopping its contexts", sandbox_id)
        if runtime is not None:
            try:
                async with asyncio.timeout(STOP_WITHIN):
                    await runtime.close(stop_kernel=not keep, reason="gateway_shutdown")
            except Exception:
                log.exception("sandbox %s: error while stopping", sandbox_id)
                if not keep:  # say, a restart held it: stop its kernel anyway
                    await self._dispose_kernel(runtime)
        if not keep:
            try:  # not for ever: a failing store holds the record, and its close() tries it once more
                async with asyncio.timeout(self.store_shutdown_wait):
                    await self._end(sandbox, "gateway_shutdown")
            except TimeoutError:
                log.warning("sandbox %s: its end is not stored yet (the store is failing)", sandbox_id)

    async def _dispose_kernel(self, runtime: SandboxRuntime) -> None:
        try:
            async with asyncio.timeout(STOP_WITHIN):
                await self.launcher.dispose(runtime.km)
        except Exception:
            log.exception("sandbox %s: could not stop its kernel", runtime.sandbox_id)

    async def _take_over_left(self) -> None:
        """The last replica stopping ends what the others left it (replicas that stopped just before
        handed their sandboxes over, and this one may not have looked yet): else their containers would
        run on with nobody holding them."""
        try:
            async with asyncio.timeout(STOP_WITHIN):
                for record in await self.store.unheld_sandboxes(LIVE):
                    if record["id"] not in self._sandboxes:
                        self._take_over_soon(record["id"])
                await self._taken()
        except Exception:  # (a failing store, a slow engine: whoever starts next takes them over)
            log.warning("replica %s: could not take over what other replicas left", self.leases.me, exc_info=True)

    async def _stop_beating(self, *, release: bool) -> None:
        try:
            async with asyncio.timeout(STOP_WITHIN):
                await self.leases.stop(release=release)
        except Exception:  # (a failing store: the heartbeat lapses by itself)
            log.warning("replica %s: could not end its heartbeat", self.leases.me, exc_info=True)

    async def _others_alive(self) -> bool:
        try:
            async with asyncio.timeout(STOP_WITHIN):
                return any(r != self.leases.me for r in await self.leases.live_replicas())
        except Exception:  # the store cannot say: as if alone
            log.warning("replica %s: could not learn whether other replicas run", self.leases.me, exc_info=True)
            return False

    def _adopt(self, sandbox_id: str, runtime: SandboxRuntime) -> None:
        self._runtimes[sandbox_id] = runtime
        self.kernels.add(sandbox_id, runtime.km)

    def _release(self, sandbox_id: str) -> SandboxRuntime | None:
        self.kernels.remove(sandbox_id)
        self.autorestarts.forget(sandbox_id)
        return self._runtimes.pop(sandbox_id, None)

    async def usage(self, sandbox_id: str, user: str) -> dict[str, Any]:
        """What the sandbox uses now (CPU seconds, memory, disk, pids) beside its limits. Not activity."""
        sandbox = await self.get(sandbox_id, user)
        measured = await self._measure(sandbox)
        limits = sandbox.resources
        saved = (sandbox.snapshot or {}).get("bytes") if sandbox.status == SandboxStatus.PAUSED else None
        return {
            "sandbox_id": sandbox.id,
            "status": str(sandbox.status),
            "at": timestamps.to_iso(timestamps.now()),
            "cpu": {"seconds": measured.cpu_seconds, "limit_cores": limits.cpu},
            "memory": {"current_bytes": measured.memory_bytes, "peak_bytes": measured.memory_peak_bytes,
                       "limit_bytes": int(limits.memory_mb) << 20},
            "disk": {"workdir_bytes": measured.disk_bytes, "tmp_bytes": measured.tmp_bytes,
                     "limit_bytes": int(limits.disk_mb) << 20, "saved_bytes": saved},
            "pids": {"current": measured.pids, "limit": limits.pids},
        }

    async def _measure(self, sandbox: Sandbox) -> Usage:
        runtime = self._runtimes.get(sandbox.id)
        measure = getattr(runtime.km.provisioner, "usage", None) if runtime is not None else None
        if measure is None or sandbox.status not in (SandboxStatus.RUNNING, SandboxStatus.FAILED):
            return Usage()
        try:
            usage: Usage = await measure()
        except Exception:
            log.warning("sandbox %s: could not measure its usage", sandbox.id, exc_info=True)
            return Usage()
        return usage

    async def _sample_usage(self) -> None:
        """Every ``usage_interval`` s, the totals over all sandboxes for Prometheus (no ids in labels)."""
        while True:
            totals = Usage(cpu_seconds=0.0, memory_bytes=0, pids=0)
            for sandbox in list(self._sandboxes.values()):
                measured = await self._measure(sandbox)
                totals.cpu_seconds = (totals.cpu_seconds or 0.0) + (measured.cpu_seconds or 0.0)
                totals.memory_bytes = (totals.memory_bytes or 0) + (measured.memory_bytes or 0)
                totals.pids = (totals.pids or 0) + (measured.pids or 0)
            saved = self.snapshots.disk_bytes() if self.snapshots is not None else 0
            self.metrics.record_usage(totals, saved_bytes=saved)
            await asyncio.sleep(self.usage_interval)

    def kernel_of(self, sandbox_id: str) -> Any:
        """The kernel manager of a live sandbox (for its activity fields), or None."""
        runtime = self._runtimes.get(sandbox_id)
        return runtime.km if runtime is not None else None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sandboxes -------------------------------------------------------------------------------

    @stop_waits_for
    async def create(
        self,
        owner: str,
        *,
        resources: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        figure_formats: list[str] | None = None,
        lifetime: float | None = None,
        idle_timeout: float | None = None,
        on_idle: str | None = None,
        auto_resume: bool | None = None,
        image: str | None = None,
        template: str | None = None,
        isolation: str | None = None,
    ) -> Sandbox:
        """Start a sandbox for ``owner``; ``lifetime`` (s) and the idle rules default to the policy's.

        ``image``: a sandbox image other than the provisioner's default (E2B templates choose one);
        such a sandbox never comes from the warm pool, which holds the default image's.
        ``isolation``: ``runc`` or ``gvisor`` where the operator allows it (default: the operator's).
        """
        limits = self.policy.resolve(resources or {})
        chosen = self.isolation.resolve(isolation, network=limits.network, unavailable=self.launcher.unavailable())
        terms = self.lifetimes.resolve(
            {"lifetime": lifetime, "idle_timeout": idle_timeout, "on_idle": on_idle, "auto_resume": auto_resume}
        )
        self.store.check_available()
        self._refuse_when_stopping()
        sandbox = Sandbox(
            owner=owner, resources=limits, provisioner=self.launcher.resolved,
            env=dict(env or {}), metadata=dict(metadata or {}),
            figure_formats=list(figure_formats or DEFAULT_FIGURE_FORMATS),
            expires_at=self.lifetimes.expiry(terms.lifetime),
            idle_timeout=self.lifetimes.default_idle_timeout if terms.idle_timeout is None else terms.idle_timeout,
            on_idle=terms.on_idle or "pause",
            auto_resume=True if terms.auto_resume is None else terms.auto_resume,
            image=image, template=template, isolation=chosen,
        )
        began = time.monotonic()
        retry_after = self._soonest_end_of(owner)
        await self.quotas.check(sandbox.to_record(), retry_after=retry_after)
        taken = self.pool.claim(limits, sandbox.figure_formats, chosen) if image is None else None
        if taken is not None and await self._take_pooled(taken, sandbox):
            self.metrics.sandbox_starts.labels(source="pool").observe(time.monotonic() - began)
            return taken[0]
        await self._put_leased(sandbox, retry_after=retry_after)  # the slot is ours
        self._sandboxes[sandbox.id] = sandbox
        try:
            runtime = await self._start_runtime(sandbox)
        except ShuttingDown:
            self._sandboxes.pop(sandbox.id, None)
            await self._end(sandbox, "gateway_shutdown")
            raise
        except Exception as exc:
            log.exception("sandbox %s: failed to start", sandbox.id)
            self._sandboxes.pop(sandbox.id, None)
            # It holds nothing: its slot is free again at once.
            await self._end(sandbox, "start_failed", failed=True)
            raise SandboxStartFailed(f"the sandbox could not be started: {start_failure(exc)}") from None
        sandbox.image = sandbox.kernel["provisioner"].get("image")
        sandbox.status = SandboxStatus.RUNNING
        self._adopt(sandbox.id, runtime)
        await self._put(sandbox, events.SANDBOX_CREATED, source="cold")
        self.metrics.sandbox_starts.labels(source="cold").observe(time.monotonic() - began)
        log.info("sandbox %s: running for %s (%s)", sandbox.id, owner, sandbox.provisioner)
        return sandbox

    async def _fit_pooled(self, taken: tuple[Sandbox, SandboxRuntime], request: Sandbox) -> bool:
        """Fit a pooled kernel to ``request``'s limits and env; False (and the pooled one gone) if that fails."""
        pooled, runtime = taken
        try:
            await runtime.configure(limits=request.resources if request.resources != pooled.resources else None,
                                    env=request.env)
        except Exception:
            log.warning("sandbox %s: could not take it from the pool; starting a fresh one", pooled.id, exc_info=True)
            await self._dispose_pooled(taken)
            return False
        return True

    async def _take_pooled(self, taken: tuple[Sandbox, SandboxRuntime], request: Sandbox) -> bool:
        """Make a pooled sandbox the requested one: owner, limits, env; False if that fails."""
        pooled, runtime = taken
        if not await self._fit_pooled(taken, request):
            return False
        for field in REQUESTED_FIELDS:
            setattr(pooled, field, getattr(request, field))
        pooled.created_at = pooled.last_active_at = timestamps.now()
        try:
            await self._put_leased(pooled, retry_after=self._soonest_end_of(request.owner),
                                   events=[self._event(pooled, events.SANDBOX_CREATED, source="pool")])
            self.events.written()
        except BaseException:  # another request took the user's last slot meanwhile
            await self._dispose_pooled(taken)
            raise
        self._sandboxes[pooled.id] = pooled
        self._adopt(pooled.id, runtime)
        log.info("sandbox %s: running for %s (from the warm pool)", pooled.id, request.owner)
        return True

    async def _put_leased(self, sandbox: Sandbox, *, retry_after: Any, events: list[dict[str, Any]] | None = None) -> None:
        """Write a new sandbox's record within its owner's quotas, with its lease (one transaction: no
        replica ever sees it unheld); nothing of either if the quotas refuse it."""
        self.leases.claim_new(sandbox.id)
        try:
            await self.quotas.put_sandbox(sandbox.to_record(), retry_after=retry_after, events=events)
        except BaseException:
            self.leases.drop(sandbox.id)
            raise

    async def _start_pooled(self) -> tuple[Sandbox, SandboxRuntime]:
        sandbox = Sandbox(owner="", resources=self.pool.profile, provisioner=self.launcher.resolved,
                          isolation=self.pool.isolation)
        runtime = await self._start_runtime(sandbox)
        sandbox.image = sandbox.kernel["provisioner"].get("image")
        sandbox.status = SandboxStatus.RUNNING
        return sandbox, runtime

    async def _dispose_pooled(self, pooled: tuple[Sandbox, SandboxRuntime]) -> None:
        try:
            await pooled[1].close()
        except Exception:
            log.exception("sandbox %s: could not stop a pooled sandbox", pooled[0].id)

    def saturated(self) -> str | None:
        """Why background work (refilling the pool) should wait now, or None: kernels being started
        for requests (the pool refills behind them, not competing with them, but waits at most
        ``WarmPool.max_wait_behind_starts`` in a row: starts that keep overlapping would hold it
        for ever), or all cores busy."""
        if self._starts:
            now = time.monotonic()
            if self._held_by_starts_since is None:
                self._held_by_starts_since = now
            if now - self._held_by_starts_since < self.pool.max_wait_behind_starts:
                return "sandboxes are being started for requests"
        cores = os.cpu_count() or 1
        if self.busy() >= cores or os.getloadavg()[0] >= cores * self.pool.max_load_per_core:
            return "the machine is saturated"
        self._held_by_starts_since = None  # the pool goes ahead: its next wait counts afresh
        return None

    async def _start_runtime(self, sandbox: Sandbox) -> SandboxRuntime:
        """Launch the kernel, connect to it, and record how to re-attach; nothing is left behind on failure.

        In a task of its own, so that ``stop`` can cancel it; ``ShuttingDown`` if it did.
        """
        self._refuse_when_stopping()
        start = asyncio.create_task(self._launch(sandbox), name=f"sandbox-start-{sandbox.id}")
        self._starts.add(start)
        start.add_done_callback(self._start_ended)
        try:
            return await start
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if self._stopping and start.cancelled() and caller is not None and not caller.cancelling():
                raise ShuttingDown("the gateway is shutting down; the sandbox was not started") from None
            raise

    def _start_ended(self, start: asyncio.Task[SandboxRuntime]) -> None:
        self._starts.discard(start)
        if not self._starts:
            self._held_by_starts_since = None
            self.pool.recheck()  # it may have waited for the starts to end

    def _refuse_when_stopping(self) -> None:
        if self._stopping:
            raise ShuttingDown("the gateway is shutting down")

    async def _launch(self, sandbox: Sandbox) -> SandboxRuntime:
        km = await self.launcher.launch(sandbox)
        try:
            sandbox.kernel = await self.launcher.record(km)
        except BaseException:
            await self.launcher.dispose(km)
            raise
        return await self._connect(sandbox, km)

    async def _connect(self, sandbox: Sandbox, km: Any) -> SandboxRuntime:
        """A runtime connected to the kernel ``km``; the kernel is stopped if it does not answer."""
        runtime = SandboxRuntime(sandbox, km, self.launcher, self.settings, on_exit=self._exit_handler(sandbox))
        try:
            await runtime.connect()
        except BaseException:
            await runtime.close()
            raise
        return runtime

    def _soonest_end_of(self, owner: str) -> Any:
        """For a Retry-After: the seconds until the soonest of ``owner``'s sandboxes ends by itself, if any will."""

        def soonest() -> float | None:
            now = timestamps.now()
            ends = []
            for sandbox in self._sandboxes.values():
                if sandbox.owner != owner:
                    continue
                if sandbox.expires_at is not None:
                    ends.append(sandbox.expires_at)
                if sandbox.status == SandboxStatus.RUNNING and not self.is_active(sandbox.id):
                    ends.append(sandbox.last_active_at + timedelta(seconds=sandbox.idle_timeout))
            return max(0.0, (min(ends) - now).total_seconds()) if ends else None

        return soonest

    def _may_see(self, sandbox: Sandbox, user: str) -> bool:
        return sandbox.owner == user or user == self.admin_user

    async def get(self, sandbox_id: str, user: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            record = await self.store.get_sandbox(sandbox_id)
            sandbox = Sandbox.from_record(record) if record else None
        if sandbox is None or not self._may_see(sandbox, user):
            raise SandboxNotFound(sandbox_id)
        return sandbox

    async def list_sandboxes(self, user: str, *, statuses: list[str] | None = None, limit: int | None = None,
                             offset: int = 0) -> list[Sandbox]:
        owner = None if user == self.admin_user else user
        records = await self.store.list_sandboxes(owner=owner, statuses=statuses, limit=limit, offset=offset)
        return [self._sandboxes.get(r["id"]) or Sandbox.from_record(r) for r in records]

    async def count_sandboxes(self, user: str, *, statuses: list[str] | None = None) -> int:
        """How many sandboxes ``list_sandboxes`` lists for ``user`` without a limit."""
        return await self.store.count_sandboxes(owner=None if user == self.admin_user else user, statuses=statuses)

    async def terminate(self, sandbox_id: str, user: str) -> Sandbox:
        sandbox = await self._here(await self.get(sandbox_id, user))
        self.store.check_available()
        await self._terminate(sandbox, "deleted")
        log.info("sandbox %s: terminated by %s", sandbox_id, user)
        return sandbox

    async def _terminate(self, sandbox: Sandbox, reason: str, *, cancel_code: str = "terminated") -> None:
        """End ``sandbox`` for ``reason``; its running and queued executions end ``cancel_code``."""
        async with self.locks.hold(sandbox.id, "being deleted" if reason == "deleted" else f"ending ({reason})"):
            if sandbox.status == SandboxStatus.TERMINATED:
                return
            runtime = self._release(sandbox.id)
            if runtime is None:
                self._sandboxes.pop(sandbox.id, None)
                await self._end(sandbox, reason)
                return
            sandbox.status = SandboxStatus.TERMINATING
            await self.store.put_sandbox(sandbox.to_record())
            try:
                await self._close_contexts(sandbox, cancel_code)
                await runtime.close(reason=cancel_code)
            finally:
                self._sandboxes.pop(sandbox.id, None)
                await self._end(sandbox, reason)

    async def reap(self, sandbox: Sandbox, reason: str) -> None:
        """What the reaper does with a sandbox that is due: ``expired`` or ``idle``."""
        if reason == EXPIRED:
            log.info("sandbox %s: expired (its lifetime ended at %s)", sandbox.id, timestamps.to_iso(sandbox.expires_at))
            await self._terminate(sandbox, EXPIRED, cancel_code="sandbox_expired")
            return
        if sandbox.status == SandboxStatus.RUNNING and sandbox.on_idle == "pause" and self.snapshots is not None:
            log.info("sandbox %s: idle for %g s; pausing it", sandbox.id, sandbox.idle_timeout)
            try:
                async with self.locks.hold(sandbox.id, "pausing"):
                    await self._pause(sandbox, IDLE)
            except SandboxBusy:
                pass  # work arrived meanwhile: it is not idle any more
            except GatewayError as exc:
                # It keeps running (nothing is lost) and is tried again after another idle timeout.
                log.warning("sandbox %s: could not pause it (%s)", sandbox.id, exc.message)
                sandbox.touch()
            return
        # A failed sandbox has no kernel left to pause: it is terminated whatever on_idle says.
        log.info("sandbox %s: idle for %g s; terminating it", sandbox.id, sandbox.idle_timeout)
        await self._terminate(sandbox, reason)

    def is_active(self, sandbox_id: str) -> bool:
        """Whether something keeps the sandbox from being idle: an execution in flight or a connected socket."""
        runtime = self._runtimes.get(sandbox_id)
        if runtime is not None and runtime.busy:
            return True
        if self._sockets[sandbox_id] > 0 or self.jupyter_connections(sandbox_id) > 0:
            return True
        return any(r.execution.sandbox_id == sandbox_id for r in self._running.values())

    def jupyter_connections(self, sandbox_id: str) -> int:
        """Jupyter channels sockets open to the sandbox's kernels: its own and its contexts'."""
        return self.kernels.connections(sandbox_id) + sum(self.kernels.connections(c.id)
                                                          for c in self.contexts.of(sandbox_id))

    def socket_opened(self, sandbox_id: str) -> None:
        """A /stream WebSocket on the sandbox opened: it is active until ``socket_closed``."""
        self._sockets[sandbox_id] += 1
        self.touch(sandbox_id)

    def socket_closed(self, sandbox_id: str) -> None:
        self._sockets[sandbox_id] -= 1
        if self._sockets[sandbox_id] <= 0:
            del self._sockets[sandbox_id]
        self.touch(sandbox_id)

    def touch(self, sandbox_id: str) -> None:
        """Activity on the sandbox (a request on it): its idle time starts again."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None:
            sandbox.touch()
            self._record_activity_soon(sandbox)

    async def update(self, sandbox_id: str, user: str, *, lifetime: float | None = None,
                     metadata: dict[str, Any] | None = None, idle_timeout: float | None = None,
                     on_idle: str | None = None, auto_resume: bool | None = None) -> Sandbox:
        """``PATCH``: a new lifetime from now, new metadata, new idle rules; all checked before any applies."""
        terms = self.lifetimes.resolve(
            {"lifetime": lifetime, "idle_timeout": idle_timeout, "on_idle": on_idle, "auto_resume": auto_resume}
        )
        sandbox = await self._here(await self.get(sandbox_id, user))
        if sandbox.status in (SandboxStatus.TERMINATING, SandboxStatus.TERMINATED):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is {sandbox.status}: it cannot be changed")
        self.store.check_available()
        if terms.lifetime is not None:
            sandbox.expires_at = self.lifetimes.expiry(terms.lifetime)
        if terms.idle_timeout is not None:
            sandbox.idle_timeout = terms.idle_timeout
        if terms.on_idle is not None:
            sandbox.on_idle = terms.on_idle
        if terms.auto_resume is not None:
            sandbox.auto_resume = terms.auto_resume
        if metadata is not None:
            sandbox.metadata = dict(metadata)
        sandbox.touch()
        await self.store.put_sandbox(sandbox.to_record())
        return sandbox

    async def _end(self, sandbox: Sandbox, reason: str, *, failed: bool = False) -> None:
        sandbox.status = SandboxStatus.TERMINATED
        sandbox.status_reason = reason
        sandbox.terminated_at = timestamps.now()
        sandbox.kernel = {}
        sandbox.snapshot = None
        ended = [self._event(sandbox, events.SANDBOX_FAILED, reason=reason)] if failed else []
        await self._put(sandbox, events.SANDBOX_TERMINATED, also=ended, reason=reason)
        self.leases.drop(sandbox.id)  # (written after the record: never a live record without a lease)
        if self.snapshots is not None:
            self.snapshots.remove(sandbox.id)  # after the record: a crash in between leaves an orphan, not a hole

    def _exit_handler(self, sandbox: Sandbox) -> Any:
        def on_exit(reason: str) -> None:
            sandbox.status = SandboxStatus.FAILED
            sandbox.status_reason = reason
            self.metrics.sandbox_exits.labels(reason=reason).inc()
            if sandbox.id not in self._sandboxes:  # still in the pool: no record, just replace it
                self.pool.notice_exit()
                return
            self._put(sandbox, events.SANDBOX_FAILED, reason=reason)  # the store holds it until it is written
            if not (self.restart_jupyter_kernels and sandbox.metadata.get("started_by") == STARTED_BY_JUPYTER):
                self.kernels.announce(sandbox.id, "dead")
            elif self.autorestarts.spend(sandbox.id):
                self.kernels.announce(sandbox.id, "restart")
                over = self._autorestarts_over.setdefault(sandbox.id, asyncio.Event())
                restart = self._spawn(self._restart_after_death(sandbox, self._runtimes.get(sandbox.id)),
                                      name=f"autorestart-{sandbox.id}")
                # (when the task ends, however: also cancelled before it ran, at a stop)
                restart.add_done_callback(lambda _: self._autorestart_over(sandbox.id, over))
            else:
                log.warning("sandbox %s: its Jupyter kernel died again after %d restarts in a row; left dead",
                            sandbox.id, self.jupyter_restart_limit)
                self.kernels.announce(sandbox.id, "dead")

        return on_exit

    def kernel_restarting(self, sandbox_id: str) -> bool:
        """A restart of the sandbox's kernel is under way, or decided (a Jupyter kernel just died)."""
        return self.locks.under_way(sandbox_id) == "restarting" or self.autorestarts.pending(sandbox_id)

    def _autorestart_over(self, sandbox_id: str, over: asyncio.Event) -> None:
        """Work that waited for the restart goes on: to the fresh kernel, or told it stayed dead."""
        if self._autorestarts_over.get(sandbox_id) is over:
            del self._autorestarts_over[sandbox_id]
        over.set()

    async def _restart_after_death(self, sandbox: Sandbox, runtime: SandboxRuntime | None) -> None:
        """Jupyter Server's policy for its kernels: a fresh kernel at once; ``status: dead`` if that fails."""
        async with self.locks.hold(sandbox.id, "restarting"):
            if runtime is None or self._runtimes.get(sandbox.id) is not runtime or sandbox.status != SandboxStatus.FAILED:
                self.autorestarts.restarted(sandbox.id)  # restarted (or deleted: then forgotten) meanwhile
                return
            while True:
                log.info("sandbox %s: restarting its Jupyter kernel, which died (%s; restart %d in a row)",
                         sandbox.id, sandbox.status_reason, self.autorestarts.in_row(sandbox.id))
                try:
                    await self._restart(sandbox.id, sandbox.owner)
                except Exception:  # (logged and recorded as restart_failed by _restart)
                    # The fresh kernel may die before the restart is over (a Jupyter socket reached it
                    # first and ran what kills it again): as for Jupyter's restarter, another death in
                    # the row, restarted while the row allows.
                    if (sandbox.status_reason == "restart_failed" and self._runtimes.get(sandbox.id) is runtime
                            and self.autorestarts.spend(sandbox.id)):
                        self.kernels.announce(sandbox.id, "restart")
                        continue
                    self.autorestarts.forget(sandbox.id)
                    self.kernels.announce(sandbox.id, "dead")
                    return
                self.autorestarts.restarted(sandbox.id)
                return

    async def _runtime(self, sandbox_id: str, user: str, *, allow_failed: bool = False, wake: bool = True,
                       settle: bool = True, locked: bool = False) -> tuple[Sandbox, SandboxRuntime]:
        """The sandbox and its runtime, ready for work; a paused sandbox is resumed first (``auto_resume``).

        ``settle``: wait for a lifecycle operation under way (a pause, say) to finish first.
        ``locked``: the caller holds the sandbox's lifecycle lock already. ``wake=False``: a paused
        sandbox is an error (``SandboxPaused``), not resumed.
        """
        if settle and not locked:
            await self._settled(sandbox_id)
        sandbox = await self._here(await self.get(sandbox_id, user))
        if sandbox.status == SandboxStatus.PAUSED:
            if not wake:
                raise SandboxPaused(f"sandbox {sandbox_id} is paused: nothing runs in it")
            await self._wake(sandbox, locked=locked)
        runtime = self._runtimes.get(sandbox_id)
        if runtime is None or sandbox.status in (SandboxStatus.TERMINATING, SandboxStatus.TERMINATED):
            raise SandboxNotRunning(f"sandbox {sandbox_id} is {sandbox.status}")
        if sandbox.status == SandboxStatus.FAILED and not allow_failed:
            raise SandboxNotRunning(
                f"sandbox {sandbox_id} has failed ({sandbox.status_reason}); "
                f"POST /api/v1/sandboxes/{sandbox_id}/restart to get a fresh kernel"
            )
        return sandbox, runtime

    async def _settled(self, sandbox_id: str) -> None:
        """Return once no lifecycle operation of the sandbox is under way (at once if none is).

        The restart of a Jupyter kernel that just died is one from the death on, before its task
        holds the lock: work waits for it as it would behind the lock (not a 409 telling its
        caller to restart a kernel the gateway is restarting)."""
        over = self._autorestarts_over.get(sandbox_id)
        if over is not None:
            await over.wait()
        if self.locks.under_way(sandbox_id) is not None:
            async with self.locks.hold(sandbox_id, "waiting for a lifecycle operation"):
                pass

    async def _wake(self, sandbox: Sandbox, *, locked: bool = False) -> None:
        """Resume a paused sandbox for work that arrived, if it allows that (else ``SandboxPaused``)."""
        if not sandbox.auto_resume:
            raise SandboxPaused(
                f"sandbox {sandbox.id} is paused and does not resume by itself (auto_resume is false); "
                f"POST /api/v1/sandboxes/{sandbox.id}/resume first"
            )
        if locked:
            await self._resume(sandbox)
            return
        async with self.locks.hold(sandbox.id, "resuming"):
            if sandbox.status == SandboxStatus.PAUSED:
                await self._resume(sandbox)

    async def ready(self, sandbox_id: str, user: str) -> Sandbox:
        """The sandbox once it can take work (resumed if paused and allowed); for files and Jupyter channels."""
        sandbox, _ = await self._runtime(sandbox_id, user, allow_failed=True)
        sandbox.touch()
        return sandbox

    # -- pause and resume ------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, user: str) -> Sandbox:
        """Save the sandbox's files and variables to the gateway's disk and stop its container."""
        sandbox = await self._here(await self.get(sandbox_id, user))
        async with self.locks.hold(sandbox_id, "pausing"):
            await self._pause(sandbox, None)
        return sandbox

    async def _pause(self, sandbox: Sandbox, reason: str | None) -> None:
        if sandbox.status == SandboxStatus.PAUSED:
            return
        runtime = self._runtimes.get(sandbox.id)
        if sandbox.status != SandboxStatus.RUNNING or runtime is None:
            raise SandboxNotRunning(f"sandbox {sandbox.id} is {sandbox.status}: only a running sandbox can be paused")
        if self.snapshots is None:
            raise SandboxNotRunning("this gateway has no place to keep paused sandboxes")
        if runtime.busy or any(r.execution.sandbox_id == sandbox.id for r in self._running.values()):
            raise SandboxBusy(f"sandbox {sandbox.id} is running code: interrupt it or wait for it, then pause")
        if self.jupyter_connections(sandbox.id):
            # Its channels would stay open to a kernel that is gone, silent: the client must go first
            # (connecting again later resumes the sandbox).
            raise SandboxBusy(f"a Jupyter client is connected to sandbox {sandbox.id}'s kernel: "
                              "close it, then pause")
        retry_after = self._soonest_end_of(sandbox.owner)
        await self.quotas.check({**sandbox.to_record(), "status": str(SandboxStatus.PAUSED)}, retry_after=retry_after)
        began = time.monotonic()
        snapshot = await self.snapshots.save(sandbox, runtime, unkept=[
            {"name": f"context {c.id}", "type": f"{c.language} context",
             "reason": "a context's kernel is not kept: it starts afresh when used again"}
            for c in self.contexts.of(sandbox.id)])
        kept = (sandbox.status, sandbox.status_reason, sandbox.kernel)
        sandbox.status, sandbox.status_reason, sandbox.kernel, sandbox.snapshot = (
            SandboxStatus.PAUSED, reason, {}, snapshot)
        paused = self._event(sandbox, events.SANDBOX_PAUSED, reason=reason, files=snapshot["files"],
                             variables=reports.total(snapshot, "variables"), lost=reports.total(snapshot, "lost"),
                             bytes=snapshot["bytes"])
        try:  # paused for good (durable, within the paused quota) before the container goes
            await self.quotas.put_sandbox(sandbox.to_record(), retry_after=retry_after, events=[paused])
            self.events.written()
        except BaseException:
            sandbox.status, sandbox.status_reason, sandbox.kernel = kept
            sandbox.snapshot = None
            self.snapshots.remove(sandbox.id)
            raise
        self._release(sandbox.id)
        try:
            await self._close_contexts(sandbox)
            await runtime.close()
        except Exception:
            log.exception("sandbox %s: could not stop its container after pausing", sandbox.id)
        log.info("sandbox %s: paused%s in %.2f s (%d files, %d variables, %d lost)", sandbox.id,
                 f" ({reason})" if reason else "", time.monotonic() - began, snapshot["files"],
                 reports.total(snapshot, "variables"), reports.total(snapshot, "lost"))

    async def resume(self, sandbox_id: str, user: str) -> Sandbox:
        """A paused sandbox running again, its files and variables restored (``restore`` says what came back)."""
        sandbox = await self._here(await self.get(sandbox_id, user))
        async with self.locks.hold(sandbox_id, "resuming"):
            if sandbox.status == SandboxStatus.PAUSED:
                await self._resume(sandbox)
            elif sandbox.status != SandboxStatus.RUNNING:
                raise SandboxNotRunning(f"sandbox {sandbox_id} is {sandbox.status}: only a paused sandbox resumes")
        return sandbox

    @stop_waits_for
    async def _resume(self, sandbox: Sandbox) -> None:
        assert self.snapshots is not None
        retry_after = self._soonest_end_of(sandbox.owner)
        await self.quotas.check({**sandbox.to_record(), "status": str(SandboxStatus.RUNNING)}, retry_after=retry_after)
        began = time.monotonic()
        sandbox.kernel = {}
        runtime = await self._resume_on_pooled(sandbox)
        source = "resume_pool" if runtime is not None else "resume"
        try:
            runtime = runtime or await self._start_runtime(sandbox)
        except ShuttingDown:
            sandbox.kernel = {}  # (it stays paused)
            raise
        except Exception as exc:
            log.exception("sandbox %s: could not start its container to resume", sandbox.id)
            sandbox.kernel = {}
            raise SandboxStartFailed(f"the sandbox could not be resumed: {exc}") from None
        try:
            report = await self.snapshots.restore(sandbox, runtime)
        except Exception as exc:
            log.exception("sandbox %s: could not restore its saved state", sandbox.id)
            await runtime.close()
            sandbox.kernel = {}
            message = exc.message if isinstance(exc, GatewayError) else str(exc)
            raise SandboxStartFailed(f"the sandbox could not be resumed (it stays paused): {message}") from None
        kept = (sandbox.status_reason, sandbox.snapshot, sandbox.restore)
        sandbox.status, sandbox.status_reason, sandbox.restore, sandbox.snapshot = (
            SandboxStatus.RUNNING, None, report, None)
        sandbox.touch()
        resumed = self._event(sandbox, events.SANDBOX_RESUMED, files=report["files"],
                              variables=reports.total(report, "variables"), lost=reports.total(report, "lost"))
        try:  # running again for good (durable, within the live quotas) before the saved state goes
            await self.quotas.put_sandbox(sandbox.to_record(), retry_after=retry_after, events=[resumed])
            self.events.written()
        except BaseException:
            sandbox.status = SandboxStatus.PAUSED
            sandbox.status_reason, sandbox.snapshot, sandbox.restore = kept
            sandbox.kernel = {}
            await runtime.close()
            raise
        self._adopt(sandbox.id, runtime)
        self.snapshots.remove(sandbox.id)
        self.metrics.sandbox_starts.labels(source=source).observe(time.monotonic() - began)
        log.info("sandbox %s: resumed in %.2f s (%d files, %d variables, %d lost)", sandbox.id,
                 time.monotonic() - began, report["files"], reports.total(report, "variables"),
                 reports.total(report, "lost"))

    async def _resume_on_pooled(self, sandbox: Sandbox) -> SandboxRuntime | None:
        """A warm-pool kernel serving ``sandbox`` from now on (under the pooled runtime id), if one fits."""
        taken = self.pool.claim(sandbox.resources, sandbox.figure_formats, sandbox.isolation)
        if taken is None or not await self._fit_pooled(taken, sandbox):
            return None
        pooled, runtime = taken
        sandbox.kernel, sandbox.image = pooled.kernel, pooled.image  # (kernel["runtime_id"] is the pooled id)
        runtime.rebind(sandbox, self._exit_handler(sandbox))
        log.info("sandbox %s: resuming on warm-pool kernel %s", sandbox.id, pooled.id)
        return runtime

    async def interrupt(self, sandbox_id: str, user: str) -> Sandbox:
        sandbox, runtime = await self._runtime(sandbox_id, user, wake=False, settle=False)
        # A signal reaching a kernel that is being started kills it: refuse rather than wait (the
        # restart or delete under way cancels the running execution anyway).
        self.locks.refuse_while_busy(sandbox_id, "interrupt")
        sandbox.touch()
        await runtime.interrupt()
        return sandbox

    def cancel_soon(self, running: RunningExecution) -> None:
        """Cancel an accepted execution whose client went away and asked for that."""
        self._spawn(self._cancel(running), name=f"cancel-{running.execution.id}")

    async def _cancel(self, running: RunningExecution) -> None:
        runtime = self._runtimes.get(running.execution.sandbox_id)
        if running.execution.context is not None:  # (it runs in another of the sandbox's kernels)
            context = self.contexts.find(running.execution.context)
            runtime = context.runtime if context is not None else None
        if runtime is None or running.execution.finished or self.locks.under_way(runtime.sandbox_id):
            return  # (a restart or delete under way cancels it anyway)
        try:
            await runtime.cancel(running.execution)
        except Exception:  # nobody is left to tell; the execution's record says how it ended
            log.exception("sandbox %s: could not cancel execution %s", runtime.sandbox_id, running.execution.id)

    @stop_waits_for
    async def restart(self, sandbox_id: str, user: str) -> Sandbox:
        self.store.check_available()
        async with self.locks.hold(sandbox_id, "restarting"):
            return await self._restart(sandbox_id, user)

    async def _restart(self, sandbox_id: str, user: str) -> Sandbox:
        sandbox, runtime = await self._runtime(sandbox_id, user, allow_failed=True, locked=True)
        self._refuse_when_stopping()
        try:
            await runtime.restart(again=lambda: self.kernels.announce(sandbox_id, "restart"))
        except Exception as exc:
            log.exception("sandbox %s: restart failed", sandbox_id)
            sandbox.status = SandboxStatus.FAILED
            sandbox.status_reason = "restart_failed"
            await self._put(sandbox, events.SANDBOX_FAILED, reason="restart_failed")
            raise SandboxStartFailed(f"the sandbox could not be restarted: {start_failure(exc)}") from None
        sandbox.status = SandboxStatus.RUNNING
        sandbox.status_reason = None
        sandbox.touch()
        await self.store.put_sandbox(sandbox.to_record())
        return sandbox

    # -- executions ------------------------------------------------------------------------------

    async def submit(self, sandbox_id: str, user: str, code: str, *, timeout: float | None = None,
                     env: dict[str, str] | None = None, context: str | None = None,
                     language: str | None = None) -> RunningExecution:
        """Accept an execution: run in its turn by a task we own, returned once stored as ``queued``.

        ``env``: environment variables for this execution only (not stored: they may be secrets).
        ``context`` (an id) or ``language``: which of the sandbox's kernels runs it (default: its own,
        python); a language without a context yet gets one, as in E2B.
        """
        sandbox, runtime = await self._runtime(sandbox_id, user)
        chosen = await self._context_for(sandbox, context, language)
        if chosen is not None:
            runtime = chosen.runtime
        self.store.check_available()
        self._refuse_when_stopping()
        execution = Execution(
            sandbox_id=sandbox_id, code=code, timeout=self.policy.timeout_for(timeout, sandbox.resources),
            context=chosen.id if chosen is not None else None,
        )
        self._check_queue(sandbox_id)
        sandbox.touch()
        self._unfinished[sandbox_id] += 1  # (no await since the check: nothing else counts in between)
        running = RunningExecution(execution, ExecutionFeed())
        if self.quotas.max_executions_per_minute:
            # Counted before it runs: in flight meanwhile (so the sandbox cannot be paused under it).
            self._running[execution.id] = running
            try:
                await self.quotas.put_execution(execution.to_record(), user)
            except BaseException:
                self._forget(running)
                raise
            self._spawn(self._run(sandbox, runtime, running, env), name=f"execution-{execution.id}")
            return running
        # The run starts while the record commits (the store keeps their order: this write is queued
        # before the task can run), so the commit costs the round trip nothing; the caller learns of
        # the execution once it is durable. The task first, so its first step (the code sent to the
        # kernel) comes before the store's writer starts (its hand-over to the store's thread).
        self._spawn(self._run(sandbox, runtime, running, env), name=f"execution-{execution.id}")
        stored = self.store.put_execution(execution.to_record())
        self._running[execution.id] = running
        await stored
        return running

    # -- contexts ---------------------------------------------------------------------------------

    async def _context_for(self, sandbox: Sandbox, context: str | None, language: str | None) -> Context | None:
        """The context an execution asked for (None: the sandbox's own kernel)."""
        if context is not None and language is not None:
            raise InvalidRequest("give 'context' or 'language', not both")
        if context is not None:
            return None if context == sandbox.id else self.contexts.get(sandbox.id, context)
        name = normalize_language(language)
        if name == "python":
            return None
        async with self._context_starts.setdefault(sandbox.id, asyncio.Lock()):  # one default per language
            found = self.contexts.by_language(sandbox.id, name)
            return found if found is not None else await self._start_context(sandbox, name, "")

    async def create_context(self, sandbox_id: str, user: str, language: str | None = None,
                             cwd: str = "") -> dict[str, Any]:
        """Start another kernel (``language``, default python) in the running sandbox, in ``cwd``."""
        name = normalize_language(language)
        sandbox, _ = await self._runtime(sandbox_id, user)
        self.store.check_available()
        return (await self._start_context(sandbox, name, cwd)).to_public()

    async def _start_context(self, sandbox: Sandbox, language: str, cwd: str) -> Context:
        context = await self.contexts.create(sandbox, language, cwd, on_exit=self._context_exited)
        self.kernels.add(context.id, context.runtime.km)  # a Jupyter kernel too: its id is the context's
        sandbox.touch()
        return context

    def _context_exited(self, context: Context, reason: str) -> None:
        log.warning("sandbox %s: the kernel of context %s is gone (%s)", context.sandbox_id, context.id, reason)
        self.kernels.announce(context.id, "dead")  # (no automatic restart: its owner restarts it)

    async def find_context(self, context_id: str, user: str) -> Context | None:
        """The context with this id in one of ``user``'s sandboxes, or None (a Jupyter kernel id may be either)."""
        context = self.contexts.find(context_id)
        if context is None:
            return None
        try:
            await self.get(context.sandbox_id, user)
        except SandboxNotFound:
            return None  # someone else's: as if there were none
        return context

    async def interrupt_context(self, sandbox_id: str, user: str, context_id: str) -> None:
        """Interrupt what runs in a context (the default one: the sandbox's ``interrupt``)."""
        if context_id == sandbox_id:
            await self.interrupt(sandbox_id, user)
            return
        sandbox, _ = await self._runtime(sandbox_id, user, wake=False, settle=False)
        context = self.contexts.get(sandbox_id, context_id)
        sandbox.touch()
        await context.runtime.interrupt()

    async def list_contexts(self, sandbox_id: str, user: str) -> list[dict[str, Any]]:
        """The sandbox's default context (its own kernel) and the others, oldest first."""
        sandbox = await self.get(sandbox_id, user)
        return [default_context(sandbox), *(c.to_public() for c in self.contexts.of(sandbox_id))]

    async def restart_context(self, sandbox_id: str, user: str, context_id: str) -> dict[str, Any]:
        """A fresh kernel for the context (the default one: the sandbox's ``restart``)."""
        if context_id == sandbox_id:
            return default_context(await self.restart(sandbox_id, user))
        sandbox, _ = await self._runtime(sandbox_id, user, allow_failed=True)
        context = self.contexts.get(sandbox_id, context_id)
        try:
            await self.contexts.restart(context, again=lambda: self.kernels.announce(context.id, "restart"))
        except GatewayError:
            raise
        except Exception as exc:
            raise SandboxStartFailed(f"the context could not be restarted: {start_failure(exc)}") from None
        sandbox.touch()
        return context.to_public()

    async def remove_context(self, sandbox_id: str, user: str, context_id: str) -> None:
        """Stop a context's kernel and forget it (the default context goes only with its sandbox)."""
        await self.get(sandbox_id, user)
        if context_id == sandbox_id:
            raise DefaultContext("the default context is the sandbox's own kernel: delete the sandbox instead")
        context = self.contexts.get(sandbox_id, context_id)
        self.kernels.remove(context.id)
        await self.contexts.remove(context)

    async def _close_contexts(self, sandbox: Sandbox, reason: str = "terminated") -> None:
        """End the sandbox's contexts: it stops running (a pause reports them among what it lost)."""
        self._context_starts.pop(sandbox.id, None)
        for context in self.contexts.of(sandbox.id):
            self.kernels.remove(context.id)
        await self.contexts.close_all(sandbox.id, reason)

    def _check_queue(self, sandbox_id: str) -> None:
        """``TooManyQueued`` if the sandbox already has ``max_queued_executions`` waiting."""
        waiting = self._unfinished[sandbox_id] - 1  # one of them runs (or is about to)
        if self.max_queued_executions and waiting >= self.max_queued_executions:
            raise TooManyQueued(
                f"sandbox {sandbox_id} already has {waiting} executions waiting behind the running one "
                f"(the limit is {self.max_queued_executions}); retry once some have finished"
            )

    async def execute(self, sandbox_id: str, user: str, code: str, *, timeout: float | None = None) -> Execution:
        """Run code and wait for its end (the wait can be abandoned; the execution goes on)."""
        running = await self.submit(sandbox_id, user, code, timeout=timeout)
        return await asyncio.shield(running.done)

    async def finished(self, running: RunningExecution) -> dict[str, Any]:
        """Wait for an accepted execution's end (abandoning the wait does not stop it); its public form."""
        await asyncio.shield(running.done)
        assert running.final is not None
        return running.final

    async def ended(self, running: RunningExecution) -> dict[str, Any]:
        """An accepted execution's public form as soon as it has ended, maybe before its record is
        durable: what is told of it must wait for ``finished``."""
        return await asyncio.shield(running.ended)

    async def _run(self, sandbox: Sandbox, runtime: SandboxRuntime, running: RunningExecution,
                   env: dict[str, str] | None = None) -> None:
        execution, feed = running.execution, running.feed
        try:
            await runtime.run(execution, feed, env)
        except Exception:
            log.exception("sandbox %s: execution %s failed in the gateway", sandbox.id, execution.id)
            execution.status = ExecutionStatus.FAILED
            execution.finished_at = timestamps.now()
            execution.error = execution_error("internal_error", "GatewayError", "the gateway failed to run this code")
        finally:
            duration_ms = execution.duration_ms
            self.metrics.execution_finished(str(execution.status), None if duration_ms is None else duration_ms / 1000)
            sandbox.touch()
            sandbox.execution_count += 1
            record = execution.to_record()  # (made once for the store and the public form: it is final)
            running.final = execution.to_public(record)
            final_event = {"type": "execution", "execution": running.final}
            # The result is told to no one before it is durable; until then (through a store outage,
            # if need be) reads find the execution here, in _running. A large one's answers are sent
            # meanwhile, all but their ends (see ExecutionFeed): its bytes go out while it commits.
            stored: asyncio.Future[None] | None = None
            if jsonbytes.reaches(running.final, jsonbytes.LARGE):
                stored = asyncio.get_running_loop().create_future()
                running.ended.set_result(running.final)
                feed.close(final_event, stored=stored)
            written = False
            try:
                try:
                    await self._put_execution(execution, sandbox.owner, record)
                except Exception:  # the database refused the record itself (a bug); the client still gets its result
                    log.exception("sandbox %s: execution %s could not be stored", sandbox.id, execution.id)
                written = True
                self._record_activity_soon(sandbox)
            finally:  # even if that write is cancelled (a stop running out of time): nobody waits forever
                self._forget(running)
                self._tell_end(running, final_event, stored, None if written else StoreUnavailable(
                    "the gateway stopped before this execution's record was stored: its result is not kept"))

    @staticmethod
    def _tell_end(running: RunningExecution, final_event: dict[str, Any], stored: asyncio.Future[None] | None,
                  lost: StoreUnavailable | None) -> None:
        """Tell the execution's waiters and followers its end is durable, or (``lost``) that it never
        will be: then none of them gets it as a result (a large answer on its way is cut short)."""
        assert running.final is not None
        if stored is None:  # a small answer: published only now
            running.ended.set_result(running.final)
            stored = None if lost is None else asyncio.get_running_loop().create_future()
            running.feed.close(final_event, stored=stored)
        if stored is not None:
            if lost is None:
                stored.set_result(None)
            else:
                stored.set_exception(lost)
                stored.exception()  # (read here: nobody may be following)
        if not running.done.done():
            if lost is None:
                running.done.set_result(running.execution)
            else:
                running.done.set_exception(lost)
                running.done.exception()

    # -- records and their events ----------------------------------------------------------------

    def _event(self, sandbox: Sandbox, type_: str, **data: Any) -> dict[str, Any]:
        return events.event(type_, sandbox.id, sandbox.owner, **data)

    def _put(self, sandbox: Sandbox, type_: str, *, also: list[dict[str, Any]] | None = None,
             **data: Any) -> Any:
        """Store the sandbox's record with the event of its change (one transaction); awaitable until durable."""
        written = self.store.put_sandbox(sandbox.to_record(), events=[*(also or []), self._event(sandbox, type_, **data)])
        self.events.written()
        return written

    def _put_execution(self, execution: Execution, owner: str, record: dict[str, Any] | None = None) -> Any:
        """Store a finished execution (``record``: its ``to_record()``, if made already) with its
        ``execution.finished`` event (``owner``: its sandbox's)."""
        finished = events.event(events.EXECUTION_FINISHED, execution.sandbox_id, owner, execution_id=execution.id,
                                status=str(execution.status), duration_ms=execution.duration_ms)
        written = self.store.put_execution(record if record is not None else execution.to_record(), events=[finished])
        self.events.written()
        return written

    def _forget(self, running: RunningExecution) -> None:
        """The execution is no longer in flight (it ended, or was never admitted)."""
        sandbox_id = running.execution.sandbox_id
        self._running.pop(running.execution.id, None)
        self._unfinished[sandbox_id] -= 1
        if self._unfinished[sandbox_id] <= 0:
            del self._unfinished[sandbox_id]

    def _record_activity_soon(self, sandbox: Sandbox) -> None:
        """Store a sandbox's ``last_active_at``/``execution_count`` within a second, once for many executions.

        A gateway killed in that second shows them a little stale; the executions themselves are
        stored one by one.
        """
        self._active.add(sandbox.id)
        if self._activity_timer is None:
            self._activity_timer = asyncio.get_running_loop().call_later(1.0, self._record_activity)

    def _record_activity(self) -> None:
        self._activity_timer = None
        active, self._active = self._active, set()
        for sandbox_id in active:
            sandbox = self._sandboxes.get(sandbox_id)
            if sandbox is not None:
                self.store.put_sandbox(sandbox.to_record())

    def running(self, execution_id: str) -> RunningExecution | None:
        return self._running.get(execution_id)

    async def sandbox_of_execution(self, execution_id: str) -> str | None:
        """The sandbox whose holder serves requests for this execution while it is in flight (its live
        feed is there); None when any replica can answer: it runs here, it has ended, or there is none."""
        if execution_id in self._running:
            return None
        record = await self.store.get_execution(execution_id)
        if record is None or record["status"] not in ("queued", "running"):
            return None
        return str(record["sandbox_id"])

    async def get_execution(self, execution_id: str, user: str) -> Execution:
        running = self._running.get(execution_id)
        if running is not None:
            execution = running.execution
        else:
            record = await self.store.get_execution(execution_id)
            if record is None:
                raise ExecutionNotFound(execution_id)
            execution = Execution.from_record(record)
        try:
            await self.get(execution.sandbox_id, user)
        except SandboxNotFound:
            raise ExecutionNotFound(execution_id) from None
        return execution

    async def iter_executions(self, sandbox_id: str, user: str) -> AsyncIterator[Execution]:
        """A sandbox's whole history, read from the store a few records at a time (for exports)."""
        await self.get(sandbox_id, user)
        async for record in self.store.iter_executions(sandbox_id):
            running = self._running.get(record["id"])
            yield running.execution if running is not None else Execution.from_record(record)

    async def list_executions(self, sandbox_id: str, user: str, *, limit: int | None = None,
                              offset: int = 0) -> list[Execution]:
        await self.get(sandbox_id, user)
        records = await self.store.list_executions(sandbox_id, limit=limit, offset=offset)
        return [
            self._running[r["id"]].execution if r["id"] in self._running else Execution.from_record(r)
            for r in records
        ]

    # -- for /health -----------------------------------------------------------------------------

    def busy(self) -> int:
        """Sandboxes running code right now."""
        return sum(1 for runtime in self._runtimes.values() if runtime.busy)

    def counts(self) -> dict[str, Any]:
        return {"live": len(self._runtimes), "busy": self.busy(), "executions_in_flight": len(self._running),
                "paused": sum(1 for s in self._sandboxes.values() if s.status == SandboxStatus.PAUSED)}
