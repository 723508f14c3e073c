"""The sandboxes' kernel managers, seen through jupyter_server's ``MappingKernelManager`` interface.

jupyter_server's kernel WebSocket code (``ZMQChannelsWebsocketConnection``) asks a mapping
kernel manager for a kernel's manager, its connection count, restart callbacks and message
buffers. ``SandboxManager`` owns the kernels; this registry only lets that code find them::

    registry.add(sandbox.id, runtime.km)
    registry.announce(sandbox.id, "restart")    # the kernel died and is being restarted
    registry.announce(sandbox.id, "dead")       # the kernel died and stays dead
    registry.remove(sandbox.id)

It never starts or stops a kernel itself. The WebSocket code registers "restart callbacks" to
send ``status: restarting`` / ``status: dead`` on iopub, as Jupyter Server does when its kernel
restarter notices a death; we have no restarter (``SandboxRuntime`` watches each kernel), so the
callbacks are kept here and fired by ``announce``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

log = logging.getLogger(__name__)


class KernelRegistry(AsyncMappingKernelManager):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        # Buffering replays output to a reconnecting socket, but the buffer is unbounded and our
        # REST executions share the kernel's iopub: every dropped socket would hoard their output.
        # Executions are stored anyway, so nothing is lost without it.
        self.buffer_offline_messages = False
        #: (kernel id, event) -> callbacks of the open WebSockets; events "restart" and "dead".
        self._status_callbacks: dict[tuple[str, str], list[Callable[[], None]]] = {}

    def add(self, kernel_id: str, km: Any) -> None:
        self._kernels[kernel_id] = km
        self._kernel_connections.setdefault(kernel_id, 0)
        self._kernel_ports[kernel_id] = km.ports

    def remove(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)
        self._kernel_connections.pop(kernel_id, None)
        self._kernel_ports.pop(kernel_id, None)
        for key in [key for key in self._status_callbacks if key[0] == kernel_id]:
            del self._status_callbacks[key]

    def add_restart_callback(self, kernel_id: str, callback: Callable[[], None], event: str = "restart") -> None:
        self._status_callbacks.setdefault((kernel_id, event), []).append(callback)

    def remove_restart_callback(self, kernel_id: str, callback: Callable[[], None], event: str = "restart") -> None:
        callbacks = self._status_callbacks.get((kernel_id, event), [])
        if callback in callbacks:
            callbacks.remove(callback)

    def announce(self, kernel_id: str, event: str) -> None:
        """Tell the kernel's WebSockets: ``restart`` -> ``status: restarting``, ``dead`` -> ``status: dead``."""
        for callback in list(self._status_callbacks.get((kernel_id, event), ())):
            try:
                callback()
            except Exception:  # one broken socket must not keep the news from the others
                log.exception("sandbox %s: could not send the kernel's %s status", kernel_id, event)

    def connections(self, kernel_id: str) -> int:
        count: int = self._kernel_connections.get(kernel_id, 0)
        return count

    # (MultiKernelManager declares it synchronous; jupyter_server's async subclass does not say so.)
    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]  # pragma: no cover
        raise NotImplementedError("sandbox kernels are started by SandboxManager")
