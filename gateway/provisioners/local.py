"""The ``local`` provisioner: a sandbox kernel as a plain local process. For development only.

It isolates nothing but the environment: the kernel gets a minimal environment (never the
gateway's own, which may hold keys) plus the sandbox's ``env``, and runs in the sandbox's own
working directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from gateway.provisioners.base import SANDBOX_DIR_KWARG, SANDBOX_KWARG, local_env, workdir_of
from gateway.provisioners.usage import Usage, directory_bytes, process_tree_usage


class LocalSandboxProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, started in the sandbox's directory and environment."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        sandbox = kwargs.pop(SANDBOX_KWARG)
        sandbox_dir = Path(kwargs.pop(SANDBOX_DIR_KWARG))
        workdir = workdir_of(sandbox_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        kwargs["cwd"] = str(workdir)
        kwargs["env"] = {
            **local_env(workdir),
            "IPYTHONDIR": str(self._ipython_dir(sandbox_dir)),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            # Shared by all local sandboxes: the font cache is built once, not in each working directory.
            "MPLCONFIGDIR": str(sandbox_dir.parent / "matplotlib"),
            "PYTHONUNBUFFERED": "1",
            **sandbox.env,
        }
        return await super().pre_launch(**kwargs)

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
