"""What every sandbox provisioner receives and offers beyond jupyter_client's provisioner interface.

``KernelLauncher`` passes two extra keyword arguments to ``start_kernel``; each provisioner pops
them in ``pre_launch``:

- ``SANDBOX_KWARG``: the ``Sandbox`` record (id, owner, resources, env, image);
- ``SANDBOX_DIR_KWARG``: the sandbox's private host directory (kernel sockets, connection file,
  and for the local provisioner the working directory).

Each provisioner also offers ``async exit_reason() -> str``: once ``poll()`` reports the kernel
gone, why (``kernel_died``, ``out_of_memory``, ``sandbox_died``); and ``async usage() -> Usage``:
what the sandbox uses right now (``gateway.provisioners.usage``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

SANDBOX_KWARG = "sandbox"
SANDBOX_DIR_KWARG = "sandbox_dir"
#: Where the sandbox image has the repository's kernels/ (images/python/Dockerfile).
KERNELS_IN_IMAGE = "/opt/code-gateway/kernels"


class ExitReasons(Protocol):
    async def exit_reason(self) -> str: ...


def workdir_of(sandbox_dir: Path) -> Path:
    """The working directory of a locally run sandbox (its files live here)."""
    return sandbox_dir / "work"


def local_env(workdir: Path) -> dict[str, str]:
    """What a process run locally for a sandbox gets: never the gateway's own environment (keys)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(workdir)}


def argv_in_image(argv: list[str], kernel_spec: Any, connection_file: str) -> list[str]:
    """A kernelspec's ``argv`` as the sandbox image runs it: its ``{connection_file}`` and its
    ``{resource_dir}`` (the kernelspec's directory: the bash kernel's own code) inside the container."""
    resource_dir = f"{KERNELS_IN_IMAGE}/{Path(kernel_spec.resource_dir).name}"
    return [arg.replace("{connection_file}", connection_file).replace("{resource_dir}", resource_dir)
            for arg in argv]


class KernelExitedAtStart(RuntimeError):
    """A kernel stopped before it bound its sockets: most often, its program is not there."""
