"""A live sandbox: its kernel manager, its kernel connection, and the queue that runs executions one at a time.

    runtime = SandboxRuntime(sandbox, km, launcher, settings, on_exit=mark_failed)
    await runtime.connect()
    await runtime.run(execution, feed)      # waits its turn: arrival order, one at a time
    await runtime.interrupt() / restart() / close()

The runtime watches its kernel (``provisioner.wait()``) and reports a death at once through
``on_exit(reason)``; a running execution then ends ``failed`` with that reason instead of
waiting for its timeout. A restart or termination cancels the running execution and every
queued one (their code was meant for the old kernel's state).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable


from gateway.execution.connection import KernelConnection, KernelGone
from gateway.execution.messages import Message
from gateway.execution.executor import Executor, OutputCaps
from gateway.execution.feed import ExecutionFeed
from gateway.execution.model import Execution, ExecutionStatus, execution_error
from gateway import timestamps
from gateway.errors import SandboxBusy
from gateway.provisioners.launcher import KernelLauncher, SandboxKernelManager
from gateway.sandboxes import execution_env
from gateway.sandboxes.model import ResourceLimits, Sandbox
from gateway.tasks import stop_tasks

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    caps: OutputCaps = OutputCaps()
    interrupt_grace: float = 10.0
    idle_grace: float = 10.0
    connect_timeout: float = 60.0


class SandboxRuntime:
    def __init__(
        self,
        sandbox: Sandbox,
        km: SandboxKernelManager,
        launcher: KernelLauncher,
        settings: RuntimeSettings,
        on_exit: Callable[[str], None],
    ) -> None:
        self.sandbox = sandbox
        self.sandbox_id = sandbox.id
        self.km = km
        self.launcher = launcher
        self.settings = settings
        self.on_exit = on_exit
        self.connection: KernelConnection | None = None
        self.executor: Executor | None = None
        self.current: Execution | None = None
        self._lock = asyncio.Lock()
        #: Bumped by restart/close: queued executions of an older generation are cancelled.
        self._generation = 0
        self._cancel_requested = False
        #: Executions cancelled while still queued: skipped when their turn comes.
        self._withdrawn: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None
        #: True while the kernel is being replaced: a signal would kill the one starting.
        self.replacing = False
        #: Why the runtime was closed (e.g. ``sandbox_expired``): the error code of what it cancels.
        self._closed_for = "cancelled"
        #: The kernel's language (a context's may not be python): how per-execution env is set.
        self.language = "python"
        self._env: dict[str, str] = {}

    async def connect(self) -> None:
        """Open the kernel connection, wait until it answers, and start watching the kernel."""
        self.connection = KernelConnection(
            self.km.client(context=self.launcher.context), self.km.messages, on_iopub=self._saw_iopub
        )
        try:
            await self._open_while_alive(self.connection)
            self.km.execution_state = "idle"
        except BaseException:
            await self.connection.close()
            self.connection = None
            raise
        self.executor = Executor(
            self.connection,
            interrupt=self.km.interrupt_kernel,
            caps=self.settings.caps,
            interrupt_grace=self.settings.interrupt_grace,
            late_output=self._late_output(),
            idle_grace=self.settings.idle_grace,
        )
        self._watcher = asyncio.create_task(self._watch(), name=f"kernel-watch-{self.sandbox_id}")

    def _late_output(self) -> bool:
        """Whether the kernel's output may trail its idle (kernelspec ``metadata.code_gateway.late_output``: Deno's)."""
        spec = self.km.kernel_spec
        return spec is not None and spec.metadata.get("code_gateway", {}).get("late_output") is True

    async def _open_while_alive(self, connection: KernelConnection) -> None:
        """``connection.open``, but give up at once if the kernel dies meanwhile (say, out of memory at start)."""
        assert self.km.provisioner is not None
        provisioner = self.km.provisioner
        opening = asyncio.ensure_future(connection.open(timeout=self.settings.connect_timeout))
        died = asyncio.ensure_future(provisioner.wait())
        try:
            await asyncio.wait({opening, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (opening, died):
                task.cancel()
            await asyncio.gather(opening, died, return_exceptions=True)
        if opening.cancelled() and died.done() and not died.cancelled() and died.exception() is None:
            reason = await provisioner.exit_reason() if hasattr(provisioner, "exit_reason") else "kernel_died"
            # (what tells a real death from a provisioner that lost track of its kernel, as a rare
            # CI failure of a restart may be: its wait() returns at once without a process)
            log.warning("sandbox %s: the kernel was gone before it answered (%s; exit status %r, %s)",
                        self.sandbox_id, reason, died.result(),
                        "the provisioner still has its process" if provisioner.has_process else "no process")
            raise KernelGone(reason)
        opening.result()

    def _saw_iopub(self, message: Message) -> None:
        """Keep the kernel's activity fields current (the Jupyter kernel API reports them)."""
        if message.msg_type == "status":
            state = message.content.get("execution_state")
            if isinstance(state, str):
                self.km.last_activity = timestamps.now()
                self.km.execution_state = state

    async def _watch(self) -> None:
        assert self.km.provisioner is not None and self.connection is not None
        provisioner = self.km.provisioner
        await provisioner.wait()
        reason = await provisioner.exit_reason() if hasattr(provisioner, "exit_reason") else "kernel_died"
        log.warning("sandbox %s: kernel is gone (%s)", self.sandbox_id, reason)
        self.km.execution_state = "dead"
        self.connection.fail(reason)
        self.on_exit(reason)

    @property
    def busy(self) -> bool:
        return self.current is not None

    async def run(self, execution: Execution, feed: ExecutionFeed | None = None,
                  env: dict[str, str] | None = None) -> Execution:
        """Run ``execution`` after every execution submitted before it.

        ``env``: environment variables the code sees for this execution only (E2B's ``envs`` of
        ``run_code``): set silently just before it, and put back as they were just after it.
        """
        generation = self._generation
        async with self._lock:
            if generation != self._generation or self.executor is None:
                return _cancelled(execution, "the sandbox was restarted or terminated before this execution ran",
                                  code=self._closed_for)
            if execution.id in self._withdrawn:
                self._withdrawn.discard(execution.id)
                return _cancelled(execution, "the execution was cancelled before it ran")
            self.current = execution
            self._cancel_requested = False
            try:
                if env:
                    await self._with_env(env)
                responsive = await self.executor.run(execution, feed, cancel_requested=lambda: self._cancel_requested)
            finally:
                self.current = None
            if env and responsive and self.connection is not None:
                await self._without_env()
            if not responsive:
                log.warning("sandbox %s: kernel ignored the interrupt; restarting it", self.sandbox_id)
                execution.error = execution_error(
                    "timeout", "TimeoutError",
                    f"execution exceeded its {execution.timeout:g} s timeout and did not stop when "
                    "interrupted; the kernel was restarted and its state is lost",
                )
                await self._replace_kernel()
        return execution

    async def _with_env(self, env: dict[str, str]) -> None:
        assert self.connection is not None
        self._env = env
        await self.connection.run_silent(execution_env.setting(env, self.language),
                                         timeout=self.settings.connect_timeout)

    async def _without_env(self) -> None:
        assert self.connection is not None
        try:
            await self.connection.run_silent(execution_env.restoring(self._env, self.language, self.sandbox.env),
                                             timeout=self.settings.connect_timeout)
        except Exception:  # the execution itself is done and reported; the kernel keeps the variables
            log.warning("sandbox %s: could not restore the environment after an execution", self.sandbox_id,
                        exc_info=True)

    async def interrupt(self) -> None:
        """Interrupt the running execution (it ends ``cancelled``); state is kept."""
        if self.replacing:
            raise SandboxBusy(f"cannot interrupt sandbox {self.sandbox_id} while its kernel is restarting")
        if self.current is not None:
            self._cancel_requested = True
            if self.executor is not None and self.executor.defer_interrupt():
                return  # sent once the kernel has started the execution
        await self.km.interrupt_kernel()

    def rebind(self, sandbox: Sandbox, on_exit: Callable[[str], None]) -> None:
        """Serve another sandbox from now on (a paused one resumed on this warm-pool kernel)."""
        self.sandbox, self.sandbox_id, self.on_exit = sandbox, sandbox.id, on_exit
        if self.connection is not None:
            self.connection.sandbox_id = sandbox.id

    async def configure(self, *, limits: ResourceLimits | None, env: dict[str, str]) -> None:
        """Fit a running kernel to a new owner's request: lower its limits, add its environment.

        Used when a sandbox comes from the warm pool, started before anyone asked for it.
        """
        if limits is not None:
            update = getattr(self.km.provisioner, "update_limits", None)
            if update is not None:
                await update(limits)
        if env:
            assert self.connection is not None
            await self.connection.run_silent(
                f"import os as _os\n_os.environ.update({dict(env)!r})\ndel _os", timeout=self.settings.connect_timeout
            )

    async def cancel(self, execution: Execution) -> None:
        """Cancel one execution: interrupt it if it runs, skip it if it still waits."""
        if self.current is execution:
            await self.interrupt()
        elif not execution.finished:
            self._withdrawn.add(execution.id)

    async def restart(self, again: Callable[[], None] | None = None) -> None:
        """A fresh kernel with empty state, same sandbox; running and queued executions are cancelled.
        ``KernelGone`` if it does not answer (``again``: see ``_replace_kernel``)."""
        self._generation += 1
        if self.connection is not None:
            self.connection.fail("restarted")
        async with self._lock:
            await self._replace_kernel(again)

    async def _replace_kernel(self, again: Callable[[], None] | None = None) -> None:
        """A fresh kernel behind the same kernel manager, once it answers.

        If it dies before it answers (not for memory), one more is started, after ``again()``
        (which tells Jupyter clients it restarts again): a kernel may crash at start for reasons
        of its own (ipykernel 7.4 did, SIGSEGV, about once in a few hundred restarts on a loaded
        machine), and a fresh kernel is what is wanted. ``KernelGone`` if that one dies too.
        """
        self.replacing = True
        try:
            await self._disconnect()
            for last in (False, True):
                self.km.execution_state = "restarting"
                await self.launcher.relaunch(self.km, self.sandbox)
                if self.km.context_of is None:  # (a context's kernel is not the sandbox's own)
                    self.sandbox.kernel = await self.launcher.record(self.km)
                try:
                    await self.connect()  # (returns once the kernel answers: its signal handlers are in place)
                    return
                except KernelGone as gone:
                    if last or gone.reason != "kernel_died":
                        raise
                log.warning("sandbox %s: the fresh kernel died before it answered; starting another", self.sandbox_id)
                if again is not None:
                    again()
        finally:
            self.replacing = False

    async def close(self, *, stop_kernel: bool = True, reason: str = "terminated") -> None:
        """Stop using the kernel: cancel all executions, then stop it (or leave it running to re-attach).

        ``reason`` is the error code of the executions this cancels (``terminated``, ``sandbox_expired``, ``gateway_shutdown``).
        """
        self._generation += 1
        if reason != "terminated":
            self._closed_for = reason
        if self.connection is not None:
            self.connection.fail(reason)
        async with self._lock:
            await self._disconnect()
            if stop_kernel:
                await self.launcher.dispose(self.km)

    async def _disconnect(self) -> None:
        if self._watcher is not None:
            await stop_tasks([self._watcher], within=10.0, what=f"sandbox {self.sandbox_id}")
            self._watcher = None
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        self.executor = None


def _cancelled(execution: Execution, message: str, *, code: str = "cancelled") -> Execution:
    execution.status = ExecutionStatus.CANCELLED
    execution.error = execution_error(code, "ExecutionCancelled", message)
    execution.finished_at = timestamps.now()
    return execution
