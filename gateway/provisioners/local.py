"""The ``local`` provisioner: a sandbox kernel as a plain local process. For development only.

It isolates nothing but the environment: the kernel gets a minimal environment (never the
gateway's own, which may hold keys) plus the sandbox's ``env``, and runs in the sandbox's own
working directory. Its sockets are reached as every sandbox's are (``sockets``): the kernel binds
them in ``<sandbox_dir>/run`` (from its own connection file there), and the gateway connects
through links to the descriptors it verified, never by those names.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from gateway.errors import SandboxStartFailed
from gateway.provisioners.base import SANDBOX_DIR_KWARG, SANDBOX_KWARG, local_env, workdir_of
from gateway.provisioners.sockets import SocketRefused, open_directory, sockets_of
from gateway.provisioners.usage import Usage, directory_bytes, process_tree_usage


def matplotlib_cache() -> Path:
    """Where matplotlib run by this user keeps its font cache, found as matplotlib finds it.

    Local sandboxes share it with each other, with every gateway of this user and with ``make
    setup``, which builds it: a first build on a machine with many fonts (a browser's) can take
    over 5 s, and then matplotlib says so on the stderr of the cell that plotted first.
    """
    configured = os.environ.get("MPLCONFIGDIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib"


class LocalSandboxProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, started in the sandbox's directory and environment."""

    sandbox_dir: Path | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        sandbox = kwargs.pop(SANDBOX_KWARG)
        sandbox_dir = self.sandbox_dir = Path(kwargs.pop(SANDBOX_DIR_KWARG))
        workdir = workdir_of(sandbox_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        kwargs["cwd"] = str(workdir)
        kwargs["env"] = {
            **local_env(workdir),
            "IPYTHONDIR": str(self._ipython_dir(sandbox_dir)),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": str(matplotlib_cache()),
            "PYTHONUNBUFFERED": "1",
            **sandbox.env,
        }
        sockets_of(self.parent).detach()
        launch = await super().pre_launch(**kwargs)
        launch["cmd"] = self._kernel_connection_file(launch["cmd"])
        return launch

    def _kernel_connection_file(self, cmd: list[str]) -> list[str]:
        """``cmd`` reading a connection file of its own, which binds the sockets in ``<sandbox_dir>/run``.

        The gateway's connection file (``km.connection_file``) names the links to them instead.
        """
        assert self.sandbox_dir is not None and self.parent is not None
        run = self.sandbox_dir / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        name = Path(self.parent.ip).name  # k for the sandbox's own kernel, c<id> for a context's
        for port in self.parent.ports:  # a killed kernel's sockets: only the new kernel's may be attached
            (run / f"{name}-{port}").unlink(missing_ok=True)
        info = {**self.parent.get_connection_info(), "ip": str(run / name)}
        info["key"] = info["key"].decode() if isinstance(info["key"], bytes) else info["key"]
        own = run / ("connection.json" if name == "k" else f"{name}.json")
        own.unlink(missing_ok=True)
        fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(info, file)
        return [str(own) if arg == self.parent.connection_file else arg for arg in cmd]

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info = await super().launch_kernel(cmd, **kwargs)
        assert self.parent is not None
        try:
            await sockets_of(self.parent).attach_when_bound(
                self._socket_directory, Path(self.parent.ip), list(self.parent.ports), owner=os.getuid())
        except SocketRefused:
            if await self.poll() is not None:
                raise SandboxStartFailed("its kernel stopped before it answered (kernel_died)") from None
            raise
        return info

    def _socket_directory(self) -> int:
        """A descriptor of ``<sandbox_dir>/run``, the kernel's socket directory, while the kernel lives."""
        assert self.sandbox_dir is not None
        if self.process is None or self.process.poll() is not None:
            raise SocketRefused("the kernel exited")
        start = os.open(self.sandbox_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_directory(start, "run")
        finally:
            os.close(start)

    async def cleanup(self, restart: bool = False) -> None:
        sockets_of(self.parent).detach()
        await super().cleanup(restart=restart)

    def _ipython_dir(self, sandbox_dir: Path) -> Path:
        """A private copy of the kernels/ IPython profile: IPython writes into its profile directory."""
        profile = Path(self.kernel_spec.resource_dir).parent / "ipython" / "profile_default"
        ipython_dir = sandbox_dir / "ipython"
        shutil.copytree(profile, ipython_dir / "profile_default", dirs_exist_ok=True)
        return ipython_dir

    async def usage(self) -> Usage:
        """The kernel's process tree and its working directory (no cgroup: nothing else bounds them)."""
        pid = getattr(self, "pid", None)
        if pid is None or await self.poll() is not None:
            return Usage()
        usage = process_tree_usage(pid)
        workdir = getattr(self, "workdir", None)
        usage.disk_bytes = directory_bytes(workdir) if workdir is not None else None
        return usage

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["workdir"] = str(getattr(self, "workdir", "")) or None
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        if provisioner_info.get("workdir"):
            self.workdir = Path(provisioner_info["workdir"])

    async def exit_reason(self) -> str:
        """Why the kernel is gone: a local process can only have died."""
        return "kernel_died"
