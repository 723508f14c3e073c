"""Why a container stopped, when the engine's event stream is late (logic around the engine only:
the real OOM kills are tests/e2e/test_containment.py's)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.provisioners.docker import SETTLE_SECONDS, DockerEngine, DockerProvisioner


class Connected:
    connected = True


def engine_whose_die_event_comes_after(seconds: float, oom_killed: bool) -> DockerEngine:
    """A DockerEngine whose container stopped, killed with SIGKILL: until its ``die`` event came (after
    ``seconds``), its state is a container still being torn down (not yet OOM-killed, no exit code)."""
    engine = DockerEngine(base_url="unix:///nowhere", instance_id="i", image="unused")
    engine.events = Connected()  # type: ignore[assignment]
    died: list[bool] = []

    async def state(container_id: str) -> dict[str, Any]:
        if not died:
            return {"Running": False, "ExitCode": 0, "OOMKilled": False}
        return {"Running": False, "ExitCode": 137, "OOMKilled": oom_killed}

    def die() -> None:
        died.append(True)
        engine.handle_event({"Action": "die", "Actor": {"ID": "c1", "Attributes": {"exitCode": "137"}}})

    engine.state = state  # type: ignore[method-assign]
    asyncio.get_running_loop().call_later(seconds, die)
    return engine


@pytest.mark.parametrize(("oom_killed", "reason"), [(True, "out_of_memory"), (False, "kernel_died")])
async def test_a_late_die_event_still_gives_the_container_s_final_reason(monkeypatch: pytest.MonkeyPatch,
                                                                       oom_killed: bool, reason: str) -> None:
    engine = engine_whose_die_event_comes_after(3.0, oom_killed)
    assert SETTLE_SECONDS > 3.0
    monkeypatch.setattr(DockerProvisioner, "engine", property(lambda self: engine))
    provisioner = DockerProvisioner()
    provisioner.container_id = "c1"
    assert await provisioner.exit_reason() == reason
