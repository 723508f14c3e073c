"""Runs one execution on a sandbox's kernel: send the code, gather its outputs in order, keep the deadline.

    executor = Executor(connection, interrupt=kernel_manager.interrupt_kernel, caps=OutputCaps())
    responsive = await executor.run(execution, feed)

Modelled on jupyter_client's execute loop: filter by parent ``msg_id``, finish when both the
iopub ``status: idle`` and the shell ``execute_reply`` arrived, one deadline for all of it.
On timeout the kernel is interrupted (state is kept) and given a grace period to go idle;
``run`` returns False when it never does, so the owner can restart it.

A kernel whose output may trail its ``status: idle`` (``late_output``: Deno's, which forwards
what the code printed from another task, tagged with the execution it belongs to, and under load
sends it after the idle) is asked one ``kernel_info`` once the execution is done: the execution
also takes whatever of its own arrives before that request's idle. ``kernel_info`` leaves Deno's
"current execution" as it is, so the trailing output keeps its parent.

A kernel's iopub PUB socket drops what a reader does not take in time (a flood from a thread of
the user's): after the reply, an idle status that was dropped would hold the execution until its
deadline. So once the reply is in, ``idle_grace`` seconds of kernel silence (nothing received at
all, messages the gate refuses included) end it too, with a note that output may have been lost
(as nbclient's ``iopub_timeout`` does). The other way round too: an idle without a reply (ipykernel
sends none when an interrupt lands in its own handling of the request) ends the execution after
``idle_grace`` — ``cancelled`` if it was interrupted on request, else ``failed`` (``KernelError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import timestamps
from gateway.execution.connection import KernelConnection, KernelGone
from gateway.execution.feed import ExecutionFeed
from gateway.execution.model import Execution, ExecutionStatus, execution_error
from gateway.execution.outputs import OutputCollector
from gateway.execution.replies import Replies

log = logging.getLogger(__name__)

#: Seconds after a held interrupt was sent to send it again while the code runs on without an error:
#: ipykernel announces the execution's input before it runs the code, and a SIGINT landing in
#: between (its own handling of the request) is taken as that request's end or lost altogether.
INTERRUPT_AGAIN_AFTER = 1.0
#: How many times a held interrupt is sent at most (the code may catch KeyboardInterrupt and go on).
INTERRUPT_ATTEMPTS = 3

#: Why a kernel went away -> (ename shown to the user, whether it was the user's own request).
GONE_REASONS: dict[str, tuple[str, bool]] = {
    "kernel_died": ("KernelDied", False),
    "out_of_memory": ("OutOfMemory", False),
    "sandbox_died": ("SandboxDied", False),
    "restarted": ("KernelRestarted", True),
    "terminated": ("SandboxTerminated", True),
    "sandbox_expired": ("SandboxExpired", True),
    "gateway_shutdown": ("GatewayShutdown", False),
}


@dataclasses.dataclass(frozen=True)
class OutputCaps:
    max_output_bytes: int = 5 << 20
    max_total_bytes: int = 10 << 20

    @property
    def max_pending_bytes(self) -> int:
        """Kernel output waiting to be handled past which more is dropped as it arrives (see ``Replies``):
        room for an execution's whole output twice over, so only a kernel outrunning the gateway loses any."""
        return 2 * max(self.max_total_bytes, self.max_output_bytes)


@dataclasses.dataclass
class _Progress:
    idle: bool = False
    reply: dict[str, Any] | None = None
    gone: KernelGone | None = None
    #: The reply came but no idle status followed it (the kernel's PUB socket dropped it).
    idle_lost: bool = False
    #: The idle came but no reply (ipykernel sends none when a SIGINT lands in its own handling
    #: of the request, before the code ran).
    reply_lost: bool = False
    #: The kernel announced the execution's input (or sent output): its code runs now and hears
    #: SIGINT. (Not yet at its busy status: ipykernel takes a SIGINT during the handling before the
    #: code as the end of the request, and sends no reply at all.)
    started: bool = False
    #: An interrupt asked for before the kernel started the execution, to send once it has.
    interrupt_pending: bool = False
    #: When a held interrupt was last sent (loop time), and how many times it was.
    interrupted_at: float | None = None
    interrupts_sent: int = 0
    #: The kernel sent an error output: a held interrupt it was sent has landed (or the code failed).
    errored: bool = False

    @property
    def done(self) -> bool:
        return self.gone is not None or self.idle_lost or self.reply_lost or (self.idle and self.reply is not None)


class Executor:
    def __init__(
        self,
        connection: KernelConnection,
        *,
        interrupt: Callable[[], Awaitable[None]],
        caps: OutputCaps,
        interrupt_grace: float = 10.0,
        late_output: bool = False,
        idle_grace: float = 10.0,
    ) -> None:
        self.connection = connection
        self.interrupt = interrupt
        self.caps = caps
        self.interrupt_grace = interrupt_grace
        self.late_output = late_output
        self.idle_grace = idle_grace
        #: How the execution running now is going (None between executions).
        self._progress: _Progress | None = None

    def defer_interrupt(self) -> bool:
        """Hold an interrupt of the running execution until the kernel has started it; False if it has.

        ipykernel ignores SIGINT outside the handling of a request: an interrupt sent while the
        execute_request still waits in the kernel's queue (right after the execution was sent,
        or behind a Jupyter client's own execution) would be lost and the code would run on.
        """
        progress = self._progress
        if progress is None or progress.started or progress.done:
            return False
        progress.interrupt_pending = True
        return True

    async def run(self, execution: Execution, feed: ExecutionFeed | None = None,
                  cancel_requested: Callable[[], bool] = lambda: False) -> bool:
        """Run ``execution`` to its end, filling it in; False if the kernel ignored an interrupt."""
        collector = OutputCollector(
            max_output_bytes=self.caps.max_output_bytes, max_total_bytes=self.caps.max_total_bytes
        )
        progress = self._progress = _Progress()
        execution.outputs = collector.outputs  # shared, so a running execution shows its outputs so far
        execution.settle = collector.settle
        execution.status = ExecutionStatus.RUNNING
        execution.started_at = timestamps.now()
        timed_out = False
        responsive = True
        try:
            msg_id = self.connection.execute(execution.code)
            with self.connection.request(msg_id, max_bytes=self.caps.max_pending_bytes) as replies:
                loop = asyncio.get_running_loop()
                if not await self._drain(replies, progress, collector, feed, loop.time() + execution.timeout):
                    timed_out = True
                    log.info("sandbox %s: execution %s timed out after %g s; interrupting",
                             execution.sandbox_id, execution.id, execution.timeout)
                    await self.interrupt()
                    responsive = await self._drain(
                        replies, progress, collector, feed, loop.time() + self.interrupt_grace
                    )
                if self.late_output and progress.gone is None and progress.done:
                    await self._settle(replies, progress, collector, feed, loop.time() + self.interrupt_grace)
        except KernelGone as gone:  # the kernel was already gone when we tried to send
            progress.gone = gone
        finally:
            self._progress = None
        collector.settle()
        execution.settle = None
        execution.truncated = collector.truncated
        execution.finished_at = timestamps.now()
        self._conclude(execution, progress, timed_out=timed_out, cancelled=cancel_requested())
        return responsive

    async def _drain(self, replies: Replies, progress: _Progress,
                     collector: OutputCollector, feed: ExecutionFeed | None, deadline: float) -> bool:
        """Handle messages until done (True) or the deadline passes (False)."""
        try:
            async with asyncio.timeout_at(deadline):
                while not progress.done:
                    if progress.reply is None and not progress.idle:
                        try:
                            async with asyncio.timeout_at(self._interrupt_again_at(progress)):
                                channel, msg = await replies.get()
                        except TimeoutError:
                            await self._interrupt_again(progress)
                            continue
                    else:  # one of the two came: the other is due at once (they take different sockets)
                        try:
                            async with asyncio.timeout(self.idle_grace):
                                channel, msg = await replies.get()
                        except TimeoutError:
                            if not self.connection.silent_for(self.idle_grace):
                                continue  # busy with other messages (say, a flood the gate refuses)
                            if progress.reply is None:
                                progress.reply_lost = True
                            else:
                                progress.idle_lost = True
                                self._publish(collector.lost(), feed)
                            break
                    self._handle(channel, msg, progress, collector, feed)
                    if progress.interrupt_pending and progress.started and not progress.done:
                        progress.interrupt_pending = False
                        await self._interrupt_again(progress)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _interrupt_again_at(progress: _Progress) -> float | None:
        """When a held interrupt is due again (loop time), or None if it is not."""
        if progress.interrupted_at is None or progress.errored or progress.interrupts_sent >= INTERRUPT_ATTEMPTS:
            return None
        return progress.interrupted_at + INTERRUPT_AGAIN_AFTER

    async def _interrupt_again(self, progress: _Progress) -> None:
        """Send a held interrupt (again), noting when, so it is resent if the code runs on without an error."""
        progress.interrupted_at = asyncio.get_running_loop().time()
        progress.interrupts_sent += 1
        await self.interrupt()

    async def _settle(self, replies: Replies, progress: _Progress,
                      collector: OutputCollector, feed: ExecutionFeed | None, deadline: float) -> None:
        """Take the execution's output that trails its idle, up to the idle of a ``kernel_info`` sent now."""
        barrier = self.connection.send("kernel_info_request", {})
        with self.connection.also(barrier, replies), contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    channel, msg = await replies.get()
                    if channel == "gone":  # the execution is done already: it keeps its outcome
                        return
                    if channel in ("iopub", "shell") and msg["parent_header"].get("msg_id") == barrier:
                        if channel == "iopub" and msg["content"].get("execution_state") == "idle":
                            return
                        continue
                    self._handle(channel, msg, progress, collector, feed)

    @staticmethod
    def _handle(channel: str, msg: Any, progress: _Progress, collector: OutputCollector,
                feed: ExecutionFeed | None) -> None:
        if channel == "gone":
            progress.gone = msg
            return
        if channel == "shell":
            progress.reply = reply_fields(msg["content"])
            return
        if channel == "dropped":
            events = collector.lost(msg)
        elif channel == "nested":  # an output too deep to be read: a note in its place
            progress.started = True
            events = collector.unreadable(msg)
        elif msg["header"]["msg_type"] == "status":
            progress.idle = progress.idle or msg["content"]["execution_state"] == "idle"
            return
        else:
            progress.started = True  # its execute_input (or already output)
            progress.errored = progress.errored or msg["header"]["msg_type"] == "error"
            events = collector.apply(msg)
        Executor._publish(events, feed)

    @staticmethod
    def _publish(events: list[dict[str, Any]], feed: ExecutionFeed | None) -> None:
        for event in events:
            if feed is not None:
                feed.publish(event)

    @staticmethod
    def _conclude(execution: Execution, progress: _Progress, *, timed_out: bool, cancelled: bool) -> None:
        reply = progress.reply or {}
        execution.execution_count = reply.get("execution_count", execution.execution_count)
        if progress.gone is not None:
            ename, expected = GONE_REASONS.get(progress.gone.reason, ("KernelDied", False))
            execution.status = ExecutionStatus.CANCELLED if expected else ExecutionStatus.FAILED
            execution.error = execution_error(
                progress.gone.reason, ename, _gone_message(progress.gone.reason)
            )
        elif timed_out:
            execution.status = ExecutionStatus.TIMED_OUT
            execution.error = execution_error(
                "timeout", "TimeoutError",
                f"execution exceeded its {execution.timeout:g} s timeout and was interrupted",
            )
        elif progress.reply_lost and not cancelled:
            execution.status = ExecutionStatus.FAILED
            execution.error = execution_error(
                "exception", "KernelError", "the kernel finished the execution without sending its reply"
            )
        elif reply.get("status") == "ok":
            execution.status = ExecutionStatus.COMPLETED
        elif reply.get("status") == "aborted" or cancelled:
            execution.status = ExecutionStatus.CANCELLED
            execution.error = execution_error(
                "interrupted", reply.get("ename", "KeyboardInterrupt"),
                reply.get("evalue", "execution was interrupted"), reply.get("traceback"),
            )
        else:
            execution.status = ExecutionStatus.FAILED
            execution.error = execution_error(
                "exception", reply.get("ename", "Error"), reply.get("evalue", ""), reply.get("traceback")
            )


#: The fields of an ``execute_reply`` an execution keeps, and the type each must have.
REPLY_FIELDS: dict[str, type] = {"status": str, "execution_count": int, "ename": str, "evalue": str}
#: Characters kept of a reply's ``ename`` and ``evalue`` each, and of its traceback in all (each
#: line costing one more): the error output beside it has the output caps; this copy had none.
MAX_REPLY_TEXT = 1 << 20


def reply_fields(content: dict[str, Any]) -> dict[str, Any]:
    """What the execution keeps of its ``execute_reply``: the fields it reads, each only if of
    the type Jupyter gives it, the traceback's lines that are text, at most ``MAX_REPLY_TEXT`` of
    each (a note saying what was cut). A kernel can send anything there (a traceback nested
    100,000 levels deep, a count that is a list, ``raise Exception('x' * 10**8)``), and what is
    kept is stored and answered."""
    kept = {key: content[key] for key, kind in REPLY_FIELDS.items() if isinstance(content.get(key), kind)}
    for key in ("ename", "evalue"):
        if key in kept and len(kept[key]) > MAX_REPLY_TEXT:
            kept[key] = kept[key][:MAX_REPLY_TEXT] + f"\n[{key} truncated: {len(kept[key]) - MAX_REPLY_TEXT} " \
                                                    "more characters]"
    traceback = content.get("traceback")
    if isinstance(traceback, list):
        kept["traceback"] = _bounded_lines([line for line in traceback if isinstance(line, str)], MAX_REPLY_TEXT)
    return kept


def _bounded_lines(lines: list[str], limit: int) -> list[str]:
    """``lines`` up to ``limit`` characters in all (each line one more), then a note of what was left out."""
    room = limit
    for index, line in enumerate(lines):
        if len(line) + 1 > room:
            cut = [*lines[:index], line[:room]] if room > 0 else lines[:index]
            return [*cut, f"[traceback truncated: {len(lines) - index} more lines]"]
        room -= len(line) + 1
    return lines


def _gone_message(reason: str) -> str:
    return {
        "kernel_died": "the kernel died while running this code; restart the sandbox to continue",
        "out_of_memory": "the sandbox ran out of memory and its kernel was killed; restart the sandbox",
        "sandbox_died": "the sandbox's container stopped; restart the sandbox to continue",
        "restarted": "the sandbox was restarted before this execution finished",
        "terminated": "the sandbox was terminated before this execution finished",
        "sandbox_expired": "the sandbox reached the end of its lifetime (expires_at) before this execution finished",
        "gateway_shutdown": "the gateway shut down before this execution finished",
    }.get(reason, f"the kernel went away ({reason})")
