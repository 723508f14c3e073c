"""A stock kernel of the sandbox image, talked to directly: the "local kernel" that notebooks run through
the gateway are compared with.

    async with image_kernel(IMAGE) as km:                    # a jupyter_client AsyncKernelManager
        await NotebookClient(notebook, km=km).async_execute()

The image's own ipykernel, IPython, NumPy, pandas and matplotlib (the exact versions a sandbox
has), started by jupyter_client through ``docker run`` (ipc sockets in a bind-mounted directory,
no network), with the gateway's IPython profile masked: no startup files, no kernel config, as
a stock install would run. Started as ``python3 -m ipykernel``, ipykernel's own entry point: the
image's ``ipykernel_launcher`` is ours, which imports ipykernel lean (kernels/launcher/). The
container is removed afterwards, whatever happened.

    async with image_kernel(IMAGE, command=SANDBOX_COMMAND, sandbox_profile=True) as km:

starts the kernel as a sandbox runs it instead: the image's launcher, the gateway's profile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

class ImageKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, its connection file given to the image's unprivileged user
    (ipykernel writes it again at start)."""

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        os.chown(self.connection_file, SANDBOX_UID, SANDBOX_UID)


#: ipykernel's own entry point, and what the gateway runs (the kernelspec, kernels/python3/kernel.json).
STOCK_COMMAND = ("python3", "-m", "ipykernel")
SANDBOX_COMMAND = ("python3", "-m", "ipykernel_launcher")
#: The image's unprivileged user (images/python/Dockerfile).
SANDBOX_UID = 1000
#: Where the image links the gateway's profile in as IPython's system-wide config (images/python/Dockerfile).
PROFILE_LINK = "/etc/ipython"


@contextlib.asynccontextmanager
async def image_kernel(image: str, *, command: tuple[str, ...] = STOCK_COMMAND,
                       sandbox_profile: bool = False) -> AsyncIterator[AsyncKernelManager]:
    # A short directory: ipc socket paths must stay under ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="image-kernel-", dir="/tmp"))
    directory.chmod(0o777)  # the kernel runs as the image's unprivileged user and makes its sockets here
    name = f"code-gateway-test-kernel-{uuid.uuid4().hex[:12]}"
    spec_dir = directory / "kernels" / "image"
    spec_dir.mkdir(parents=True)
    # (tmpfs over the link's target: the gateway's startup files and kernel config are hidden)
    mask = [] if sandbox_profile else [f"--mount=type=tmpfs,destination={PROFILE_LINK}"]
    argv = ["docker", "run", "--rm", "-i", f"--name={name}", "--network=none", f"--volume={directory}:{directory}",
            *mask, image, *command, "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "image", "language": "python"}))
    km = ImageKernelManager(kernel_name="image", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]),
                            transport="ipc", ip=str(directory / "k"), connection_file=str(directory / "kernel.json"))
    try:
        yield km
    finally:
        with contextlib.suppress(Exception):
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
