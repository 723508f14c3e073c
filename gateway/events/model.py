"""The event record: one state change of a sandbox or an execution, as clients and webhooks see it.

    record = event(SANDBOX_PAUSED, sandbox.id, sandbox.owner, reason="idle")
    store.put_sandbox(sandbox.to_record(), events=[record])    # stored with the change, in one transaction

``{"id", "type", "time", "sandbox_id", "owner", "data"}``; the store gives ``id`` (the event's
position in the outbox, increasing) when it commits the change.
"""

from __future__ import annotations

from typing import Any

from gateway import timestamps

SANDBOX_CREATED = "sandbox.created"
SANDBOX_PAUSED = "sandbox.paused"
SANDBOX_RESUMED = "sandbox.resumed"
SANDBOX_FAILED = "sandbox.failed"
SANDBOX_TERMINATED = "sandbox.terminated"
EXECUTION_FINISHED = "execution.finished"

TYPES = (SANDBOX_CREATED, SANDBOX_PAUSED, SANDBOX_RESUMED, SANDBOX_FAILED, SANDBOX_TERMINATED, EXECUTION_FINISHED)


def event(type_: str, sandbox_id: str, owner: str, **data: Any) -> dict[str, Any]:
    """An event as it goes into the outbox (without ``id``: the store numbers it)."""
    assert type_ in TYPES, type_
    return {"type": type_, "time": timestamps.to_iso(timestamps.now()), "sandbox_id": sandbox_id,
            "owner": owner, "data": data}
