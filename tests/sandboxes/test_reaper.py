"""What the reaper finds due: expired whatever the sandbox does; idle only when nothing keeps it active."""

from __future__ import annotations

from datetime import timedelta

from gateway import timestamps
from gateway.sandboxes.model import ResourceLimits, Sandbox, SandboxStatus
from gateway.sandboxes.reaper import EXPIRED, IDLE, due


def sandbox(**fields: object) -> Sandbox:
    made = Sandbox(owner="alice", resources=ResourceLimits(), provisioner="local", status=SandboxStatus.RUNNING)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def test_expired_whatever_it_does() -> None:
    now = timestamps.now()
    for status in (SandboxStatus.RUNNING, SandboxStatus.FAILED, SandboxStatus.PAUSED):
        assert due(sandbox(status=status, expires_at=now), now, active=True) == EXPIRED
    assert due(sandbox(expires_at=now + timedelta(seconds=1)), now, active=False) is None


def test_idle_only_past_its_timeout_and_when_inactive() -> None:
    now = timestamps.now()
    quiet = sandbox(on_idle="terminate", idle_timeout=10, last_active_at=now - timedelta(seconds=10))
    assert due(quiet, now, active=False) == IDLE
    assert due(quiet, now, active=True) is None
    assert due(quiet, now - timedelta(seconds=1), active=False) is None


def test_transitions_finish_first() -> None:
    now = timestamps.now()
    for status in (SandboxStatus.CREATING, SandboxStatus.TERMINATING, SandboxStatus.TERMINATED):
        assert due(sandbox(status=status, expires_at=now - timedelta(seconds=5)), now, active=False) is None
