"""Why a container stopped, when the engine's event stream is late (logic around the engine only:
the real OOM kills are tests/e2e/test_containment.py's)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.provisioners.docker import OOM_AFTER_DIE_SECONDS, SETTLE_SECONDS, DockerEngine, DockerProvisioner


class Connected:
    connected = True


def engine_whose_events_come_late(die_after: float, oom_killed: bool, oom_after: float | None = None) -> DockerEngine:
    """A DockerEngine whose container stopped, killed with SIGKILL: until its ``die`` event came (after
    ``die_after`` seconds), its state is a container still being torn down (not yet OOM-killed, no exit
    code); an ``oom`` event (if ``oom_after``) comes that many seconds after the die, and only then does
    the state say OOM-killed."""
    engine = DockerEngine(base_url="unix:///nowhere", instance_id="i", image="unused")
    engine.events = Connected()  # type: ignore[assignment]
    died: list[bool] = []
    oom: list[bool] = []

    async def state(container_id: str) -> dict[str, Any]:
        if not died:
            return {"Running": False, "ExitCode": 0, "OOMKilled": False}
        return {"Running": False, "ExitCode": 137, "OOMKilled": oom_killed or bool(oom)}

    def event(action: str, **attributes: str) -> None:
        engine.handle_event({"Action": action, "Actor": {"ID": "c1", "Attributes": attributes}})

    def die() -> None:
        died.append(True)
        event("die", exitCode="137")
        if oom_after is not None:
            asyncio.get_running_loop().call_later(oom_after, lambda: (oom.append(True), event("oom")))

    engine.state = state  # type: ignore[method-assign]
    asyncio.get_running_loop().call_later(die_after, die)
    return engine


async def reason_of(monkeypatch: pytest.MonkeyPatch, engine: DockerEngine) -> str:
    monkeypatch.setattr(DockerProvisioner, "engine", property(lambda self: engine))
    provisioner = DockerProvisioner()
    provisioner.container_id = "c1"
    return await provisioner.exit_reason()


@pytest.mark.parametrize(("oom_killed", "reason"), [(True, "out_of_memory"), (False, "kernel_died")])
async def test_a_late_die_event_still_gives_the_container_s_final_reason(monkeypatch: pytest.MonkeyPatch,
                                                                       oom_killed: bool, reason: str) -> None:
    assert SETTLE_SECONDS > 3.0
    assert await reason_of(monkeypatch, engine_whose_events_come_late(3.0, oom_killed)) == reason


@pytest.mark.parametrize(("oom_after", "reason"), [(1.0, "out_of_memory"), (None, "kernel_died")])
async def test_an_oom_event_after_the_die_event_still_says_out_of_memory(monkeypatch: pytest.MonkeyPatch,
                                                                        oom_after: float | None, reason: str) -> None:
    """The die of a SIGKILLed container in at once, its oom a second later: out_of_memory (kernel_died
    when no oom comes within ``OOM_AFTER_DIE_SECONDS``)."""
    assert OOM_AFTER_DIE_SECONDS > 1.0
    assert await reason_of(monkeypatch, engine_whose_events_come_late(0.0, False, oom_after)) == reason
