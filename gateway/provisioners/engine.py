"""Whether a Docker engine answers, for ``provisioner = auto`` and for /health."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

#: Where docker.from_env() looks when DOCKER_HOST is not set.
DEFAULT_SOCKET = "/var/run/docker.sock"


def _unix_socket_refuses(timeout: int) -> bool:
    """True if the engine is a unix socket (the usual case) that no one listens on.

    Checked first with a socket we close: docker-py's unix connection leaks its socket when the
    connect fails (a ResourceWarning at garbage collection, an error under our test settings).
    """
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    if not host.startswith("unix://"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(host[len("unix://"):])
        except OSError as exc:
            log.debug("docker engine does not answer at %s: %s", host, exc)
            return True
    return False


def _ping(timeout: int) -> bool:
    import docker

    if _unix_socket_refuses(timeout):
        return False
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # any failure means "no usable engine"; say why at debug level
        log.debug("docker engine does not answer: %s", exc)
        return False


async def engine_answers(timeout: int = 3) -> bool:
    """True if ``docker.from_env()`` reaches an engine within ``timeout`` seconds."""
    return await asyncio.get_running_loop().run_in_executor(None, _ping, timeout)
