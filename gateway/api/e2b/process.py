"""envd's process service (Connect RPC): E2B's ``commands`` over ``SandboxProcesses``.

``Start`` streams a command's start (its pid), its output and its end; the command goes on if
the client goes away (``Connect`` picks it up again by pid), and it is killed when the request's
``Connect-Timeout-Ms`` (the SDK's ``timeout``) runs out, as envd does. ``List``, ``SendInput``,
``CloseStdin``, ``SendSignal`` (SIGTERM, SIGKILL: to the command's whole process tree). A
pseudo-terminal (``pty``), ``Update`` and ``StreamInput`` are not offered here.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any, Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from gateway.api.e2b import paths
from gateway.api.e2b.connect import current_sandbox
from gateway.api.e2b.envd_rpc.process import process_pb as pb
from gateway.api.e2b.envd_rpc.process.process_connect import Process
from gateway.api.e2b.rpc import connect_error, translated
from gateway.errors import TooManyFollowers
from gateway.sandboxes.inputs import check_env
from gateway.sandboxes.processes import Command, SandboxProcesses

SIGNALS = {pb.Signal.SIGTERM: signal.SIGTERM, pb.Signal.SIGKILL: signal.SIGKILL}
#: Seconds of silence after which a command's stream sends a keepalive.
KEEPALIVE = 15.0
NOT_HERE = "is not supported by this gateway (Code Interpreter Gateway's E2B API)"


def process_event(kind: str, value: Any, command: Command) -> pb.ProcessEvent:
    if kind == "start":
        start: Oneof[Literal["start"], pb.ProcessEvent.StartEvent] = Oneof(
            "start", pb.ProcessEvent.StartEvent(pid=value))
        return pb.ProcessEvent(event=start)
    if kind == "keepalive":
        keepalive: Oneof[Literal["keepalive"], pb.ProcessEvent.KeepAlive] = Oneof(
            "keepalive", pb.ProcessEvent.KeepAlive())
        return pb.ProcessEvent(event=keepalive)
    if kind in ("stdout", "stderr"):
        stdout: Oneof[Literal["stdout"], bytes] = Oneof("stdout", value)
        stderr: Oneof[Literal["stderr"], bytes] = Oneof("stderr", value)
        chunk = pb.ProcessEvent.DataEvent(output=stdout if kind == "stdout" else stderr)
        data: Oneof[Literal["data"], pb.ProcessEvent.DataEvent] = Oneof("data", chunk)
        return pb.ProcessEvent(event=data)
    end = pb.ProcessEvent.EndEvent(exit_code=value if isinstance(value, int) else -1, exited=kind == "end",
                                   status=f"exit status {value}" if kind == "end" else "cut off")
    if kind == "cut":
        end.error = f"the stream fell behind the command's output ({value}); connect again to follow it"
    elif command.error:
        end.error = command.error
    ended: Oneof[Literal["end"], pb.ProcessEvent.EndEvent] = Oneof("end", end)
    return pb.ProcessEvent(event=ended)


class ProcessService(Process):
    """The ``process.Process`` service for connectrpc."""

    def __init__(self, processes: SandboxProcesses) -> None:
        self.processes = processes

    async def list(self, request: pb.ListRequest, ctx: RequestContext[Any, Any]) -> pb.ListResponse:
        sandbox = current_sandbox.get()
        return pb.ListResponse(processes=[self._info(c) for c in self.processes.list(sandbox.id)])

    def start(self, request: pb.StartRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[pb.StartResponse]:
        return self._start(request, ctx)

    async def _start(self, request: pb.StartRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[pb.StartResponse]:
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, f"a pseudo-terminal (pty) {NOT_HERE}")
        config = request.process or pb.ProcessConfig()
        timeout_ms = ctx.timeout_ms
        with translated():
            cwd = paths.relative(config.cwd) if config.has_field("cwd") and config.cwd else ""
            self.processes.check_followers(current_sandbox.get().id)  # (not started if it could not be followed)
            command = await self.processes.start(
                current_sandbox.get(), [config.cmd, *config.args], cwd=cwd,
                env=check_env(dict(config.envs), "envs"),
                stdin=request.stdin if request.has_field("stdin") else True,
                tag=request.tag if request.has_field("tag") else None,
                timeout=timeout_ms / 1000 if timeout_ms is not None else None,
            )
        async for event in self._follow(command):
            yield pb.StartResponse(event=event)

    def connect(self, request: pb.ConnectRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[pb.ConnectResponse]:
        return self._connect(request)

    async def _connect(self, request: pb.ConnectRequest) -> AsyncIterator[pb.ConnectResponse]:
        command = self._find(request.process)
        async for event in self._follow(command):
            yield pb.ConnectResponse(event=event)

    async def _follow(self, command: Command) -> AsyncIterator[pb.ProcessEvent]:
        with translated():
            command.slots.check()  # (refused before its start event; ``follow`` checks again, at its start)
        yield process_event("start", command.pid, command)
        # Keepalives also let connectrpc notice a client that went away from a silent command.
        try:
            async for kind, value in command.follow(idle=KEEPALIVE):
                yield process_event(kind, value, command)
        except TooManyFollowers as exc:  # (another took the last slot meanwhile)
            raise connect_error(exc) from None

    async def send_input(self, request: pb.SendInputRequest, ctx: RequestContext[Any, Any]) -> pb.SendInputResponse:
        command = self._find(request.process)
        given = request.input
        if given is None or given.input is None or given.input.field != "stdin":
            raise ConnectError(Code.UNIMPLEMENTED, f"input to a pseudo-terminal (pty) {NOT_HERE}")
        with translated():
            await command.write(given.input.value)
        return pb.SendInputResponse()

    async def close_stdin(self, request: pb.CloseStdinRequest, ctx: RequestContext[Any, Any]) -> pb.CloseStdinResponse:
        await self._find(request.process).close_stdin()
        return pb.CloseStdinResponse()

    async def send_signal(self, request: pb.SendSignalRequest, ctx: RequestContext[Any, Any]) -> pb.SendSignalResponse:
        command = self._find(request.process)
        signum = SIGNALS.get(request.signal)
        if signum is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "the signal must be SIGTERM or SIGKILL")
        await command.signal(signum)
        return pb.SendSignalResponse()

    async def update(self, request: pb.UpdateRequest, ctx: RequestContext[Any, Any]) -> pb.UpdateResponse:
        raise ConnectError(Code.UNIMPLEMENTED, f"resizing a pseudo-terminal (pty) {NOT_HERE}")

    async def stream_input(self, request: AsyncIterator[pb.StreamInputRequest],
                           ctx: RequestContext[Any, Any]) -> pb.StreamInputResponse:
        raise ConnectError(Code.UNIMPLEMENTED, f"streamed input (stream_input) {NOT_HERE}; use send_stdin")

    def _find(self, selector: pb.ProcessSelector | None) -> Command:
        sandbox = current_sandbox.get()
        chosen = selector.selector if selector is not None else None
        if chosen is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "a process (pid or tag) is required")
        with translated():
            if chosen.field == "pid":
                return self.processes.find(sandbox.id, pid=int(chosen.value))
            return self.processes.find(sandbox.id, tag=str(chosen.value))

    @staticmethod
    def _info(command: Command) -> pb.ProcessInfo:
        config = pb.ProcessConfig(cmd=command.argv[0], args=command.argv[1:], envs=dict(command.env))
        if command.cwd:
            config.cwd = paths.absolute(command.cwd)
        info = pb.ProcessInfo(config=config, pid=command.pid)
        if command.tag is not None:
            info.tag = command.tag
        return info
