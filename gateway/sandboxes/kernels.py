"""The sandboxes' kernel managers, seen through jupyter_server's ``MappingKernelManager`` interface.

jupyter_server's kernel WebSocket code (``ZMQChannelsWebsocketConnection``) asks a mapping
kernel manager for a kernel's manager, its connection count, restart callbacks and message
buffers. ``SandboxManager`` owns the kernels; this registry only lets that code find them::

    registry.add(sandbox.id, runtime.km)
    registry.remove(sandbox.id)

It never starts or stops a kernel itself.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class KernelRegistry(AsyncMappingKernelManager):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Buffering replays output to a reconnecting socket, but the buffer is unbounded and our
        # REST executions share the kernel's iopub: every dropped socket would hoard their output.
        # Executions are stored anyway, so nothing is lost without it.
        self.buffer_offline_messages = False

    def add(self, kernel_id: str, km: Any) -> None:
        self._kernels[kernel_id] = km
        self._kernel_connections.setdefault(kernel_id, 0)
        self._kernel_ports[kernel_id] = km.ports

    def remove(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)
        self._kernel_connections.pop(kernel_id, None)
        self._kernel_ports.pop(kernel_id, None)

    def connections(self, kernel_id: str) -> int:
        return self._kernel_connections.get(kernel_id, 0)

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # pragma: no cover - guard
        raise NotImplementedError("sandbox kernels are started by SandboxManager")
