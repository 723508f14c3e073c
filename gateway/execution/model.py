"""The Execution record: one code request, its status, its ordered nbformat outputs and their summaries."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway import timestamps
from gateway.jsonbytes import Encoded


class ExecutionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


FINISHED = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT, ExecutionStatus.CANCELLED}
)


def execution_error(code: str, ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, Any]:
    """The ``error`` field: ``code`` says who failed (``exception`` is the user's code raising)."""
    return {"code": code, "ename": ename, "evalue": evalue, "traceback": traceback or []}


@dataclasses.dataclass
class Execution:
    sandbox_id: str
    code: str
    timeout: float
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    status: ExecutionStatus = ExecutionStatus.QUEUED
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: dict[str, Any] | None = None
    execution_count: int | None = None
    #: True when some output was cut to respect the gateway's output caps.
    truncated: bool = False
    #: The context it ran in (None: the sandbox's own kernel, its default python context).
    context: str | None = None
    created_at: datetime = dataclasses.field(default_factory=timestamps.now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: While it runs: brings ``outputs`` up to date (its collector joins stream text only when asked).
    settle: Callable[[], None] | None = dataclasses.field(default=None, repr=False, compare=False)
    #: Once it has ended: its outputs as every record of it holds them, encoded once (see ``to_record``).
    _encoded: Encoded | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def settled_outputs(self) -> list[dict[str, Any]]:
        """``outputs``, up to date."""
        if self.settle is not None:
            self.settle()
        return self.outputs

    def stream_text(self, name: str) -> str:
        return "".join(o["text"] for o in self.settled_outputs()
                       if o["output_type"] == "stream" and o["name"] == name)

    @property
    def result(self) -> dict[str, Any] | None:
        for output in self.settled_outputs():
            if output["output_type"] == "execute_result":
                data: dict[str, Any] = output["data"]
                return data
        return None

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds() * 1000, 3)

    def to_record(self) -> dict[str, Any]:
        """What the store keeps (encoded later, on the store's thread: nothing in it may change afterwards).

        Outputs are replaced, never changed in place, so a copy of the list is a snapshot. Once
        the execution has ended, every record holds the same snapshot, an ``Encoded`` list: its
        JSON is made once for the stored record, the response and each stream's final event.
        """
        return {
            "id": self.id,
            "sandbox_id": self.sandbox_id,
            "code": self.code,
            "status": str(self.status),
            "outputs": self._snapshot(),
            "error": self.error,
            "execution_count": self.execution_count,
            "truncated": self.truncated,
            "context": self.context,
            "timeout": self.timeout,
            "created_at": timestamps.to_iso(self.created_at),
            "started_at": timestamps.to_iso(self.started_at),
            "finished_at": timestamps.to_iso(self.finished_at),
        }

    def _snapshot(self) -> list[dict[str, Any]]:
        outputs = self.settled_outputs()
        if not self.finished or self.settle is not None:  # still running: a new snapshot each time
            return list(outputs)
        encoded = self._encoded
        # (a new one if the outputs changed since: an execution's outputs replaced after its end)
        if encoded is None or len(encoded) != len(outputs) or any(a is not b for a, b in zip(encoded, outputs)):
            encoded = self._encoded = Encoded(outputs)
        return encoded

    def to_public(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record (``record``: made by ``to_record`` since the last change) plus the conveniences
        derived from the outputs."""
        return {
            **(record if record is not None else self.to_record()),
            "stdout": self.stream_text("stdout"),
            "stderr": self.stream_text("stderr"),
            "result": self.result,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Execution:
        return cls(
            id=record["id"],
            sandbox_id=record["sandbox_id"],
            code=record["code"],
            timeout=record["timeout"],
            status=ExecutionStatus(record["status"]),
            outputs=record["outputs"],
            error=record.get("error"),
            execution_count=record.get("execution_count"),
            truncated=record.get("truncated", False),
            context=record.get("context"),
            created_at=timestamps.from_iso(record["created_at"]),  # type: ignore[arg-type]
            started_at=timestamps.from_iso(record.get("started_at")),
            finished_at=timestamps.from_iso(record.get("finished_at")),
        )
