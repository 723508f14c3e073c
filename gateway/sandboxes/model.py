"""The sandbox record: identity, owner, lifecycle status, resource limits, and how to re-attach to its kernel."""

from __future__ import annotations

import dataclasses
import enum
import secrets
import uuid
from datetime import datetime
from typing import Any

from gateway import timestamps


class SandboxStatus(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    #: No container or kernel: its files and variables wait on the gateway's disk (``resume``).
    PAUSED = "paused"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


#: Statuses after which a sandbox never runs code again.
ENDED = frozenset({SandboxStatus.TERMINATED})

#: What an idle sandbox becomes (``on_idle``).
ON_IDLE = ("pause", "terminate")

#: Inline figure formats a sandbox may ask for (matplotlib_inline's names), and the default.
FIGURE_FORMATS = ("png", "retina", "jpeg", "svg", "pdf")
DEFAULT_FIGURE_FORMATS = ("png",)
#: How the kernel learns its figure formats (read and removed by kernels/.../startup/10-figures.py).
FIGURE_FORMATS_ENV = "CODE_GATEWAY_FIGURE_FORMATS"


def new_access_token() -> str:
    return secrets.token_hex(20)


@dataclasses.dataclass(frozen=True)
class ResourceLimits:
    """What one sandbox may use. Validated against the operator's policy by ``ResourcePolicy``."""

    cpu: float = 1.0
    memory_mb: int = 512
    disk_mb: int = 1024
    pids: int = 256
    network: bool = False
    #: Default per-execution timeout in seconds; a request may ask for its own.
    timeout: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceLimits:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class Sandbox:
    """One isolated kernel owned by one user. ``kernel`` holds the private re-attach information."""

    owner: str
    resources: ResourceLimits
    provisioner: str
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    status: SandboxStatus = SandboxStatus.CREATING
    #: Why the sandbox is in its status, when that is not the obvious one (e.g. ``kernel_died``).
    status_reason: str | None = None
    image: str | None = None
    #: How its container is kept from the host: ``runc`` or ``gvisor`` (None: a local process, no isolation).
    isolation: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: MIME types of inline plots: ``png`` (default), ``svg``, ... (see ``FIGURE_FORMATS``).
    figure_formats: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_FIGURE_FORMATS))
    created_at: datetime = dataclasses.field(default_factory=timestamps.now)
    last_active_at: datetime = dataclasses.field(default_factory=timestamps.now)
    terminated_at: datetime | None = None
    #: When the sandbox is terminated (``status_reason: expired``), whatever it is doing; None: never.
    expires_at: datetime | None = None
    #: Seconds without activity after which the sandbox is paused or terminated (``on_idle``).
    idle_timeout: float = 600.0
    on_idle: str = "pause"
    #: Whether work on a paused sandbox resumes it first (else: 409 ``sandbox_paused``).
    auto_resume: bool = True
    #: Executions run in this sandbox so far (across restarts).
    execution_count: int = 0
    #: While paused: what was saved (``files``, ``bytes``, ``variables``, ``modules``, ``lost``, ``at``),
    #: bounded (``truncated``, ``omitted``: see ``gateway.sandboxes.reports``).
    snapshot: dict[str, Any] | None = None
    #: After a resume: what came back (``files``, ``variables``, ``lost``, ``at``), bounded as well.
    restore: dict[str, Any] | None = None
    kernel: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The template name it was created from through the E2B API (``code-interpreter-v1``...), if any.
    template: str | None = None
    #: What traffic of other dialects must carry to reach this sandbox without an API key (E2B's
    #: envd access token): a secret of its owner's, never shown by our own API.
    access_token: str = dataclasses.field(default_factory=lambda: new_access_token())

    def touch(self) -> None:
        self.last_active_at = timestamps.now()

    @property
    def runtime_id(self) -> str:
        """The id its kernel runs under (container name and labels, kernel directory): its own, or that of
        the warm-pool sandbox it was resumed on (``kernel["runtime_id"]``)."""
        return str(self.kernel.get("runtime_id") or self.id)

    def kernel_env(self) -> dict[str, str]:
        """The environment the kernel starts with: the user's ``env`` and the gateway's display settings."""
        return {**self.env, FIGURE_FORMATS_ENV: ",".join(self.figure_formats)}

    def to_public(self) -> dict[str, Any]:
        """The sandbox as the API shows it to its owner (no kernel connection secrets)."""
        return {
            "id": self.id,
            "owner": self.owner,
            "status": str(self.status),
            "status_reason": self.status_reason,
            "provisioner": self.provisioner,
            "image": self.image,
            "isolation": self.isolation,
            "resources": self.resources.to_dict(),
            "env": dict(self.env),
            "metadata": self.metadata,
            "figure_formats": list(self.figure_formats),
            "created_at": timestamps.to_iso(self.created_at),
            "last_active_at": timestamps.to_iso(self.last_active_at),
            "terminated_at": timestamps.to_iso(self.terminated_at),
            "expires_at": timestamps.to_iso(self.expires_at),
            "idle_timeout": self.idle_timeout,
            "on_idle": self.on_idle,
            "auto_resume": self.auto_resume,
            "execution_count": self.execution_count,
            "snapshot": self.snapshot,
            "restore": self.restore,
            "template": self.template,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild this object, for the store (which encodes it later: copies)."""
        return {**self.to_public(), "metadata": dict(self.metadata), "kernel": dict(self.kernel),
                "access_token": self.access_token}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sandbox:
        return cls(
            id=record["id"],
            owner=record["owner"],
            status=SandboxStatus(record["status"]),
            status_reason=record.get("status_reason"),
            provisioner=record["provisioner"],
            image=record.get("image"),
            isolation=record.get("isolation"),
            resources=ResourceLimits.from_dict(record["resources"]),
            env=record.get("env") or {},
            metadata=record.get("metadata") or {},
            figure_formats=record.get("figure_formats") or list(DEFAULT_FIGURE_FORMATS),
            created_at=timestamps.from_iso(record["created_at"]),  # type: ignore[arg-type]
            last_active_at=timestamps.from_iso(record["last_active_at"]),  # type: ignore[arg-type]
            terminated_at=timestamps.from_iso(record.get("terminated_at")),
            expires_at=timestamps.from_iso(record.get("expires_at")),
            idle_timeout=record.get("idle_timeout", 600.0),
            on_idle=record.get("on_idle", "pause"),
            auto_resume=record.get("auto_resume", True),
            execution_count=record.get("execution_count", 0),
            snapshot=record.get("snapshot"),
            restore=record.get("restore"),
            kernel=record.get("kernel") or {},
            template=record.get("template"),
            # (records from before access tokens get one now; it is stored with the next write)
            access_token=record.get("access_token") or new_access_token(),
        )
