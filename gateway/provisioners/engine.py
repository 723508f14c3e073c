"""Whether a Docker engine answers, for ``provisioner = auto`` and for /health."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def _ping(timeout: int) -> bool:
    import docker

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
