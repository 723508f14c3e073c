"""The operator's isolation policy: the runtime sandboxes run under by default, and those a request may choose.

    policy = IsolationPolicy(default="gvisor", allowed=["runc"])   # --runtime=gvisor --allow-isolation=runc
    name = policy.resolve(body.get("isolation"), network=False, unavailable=engine.unavailable)

``runc`` is Docker's default runtime; ``gvisor`` runs the same hardened container under runsc,
whose own kernel stands between the sandbox and the host's (``gateway.provisioners.isolation``).
A request naming an isolation the operator does not offer is a 403 ``isolation_not_allowed``;
one this gateway cannot provide (runsc not registered, local processes) a 422
``isolation_unavailable`` saying why. The answer is never a weaker isolation than asked for.
"""

from __future__ import annotations

from traitlets import CaselessStrEnum, List
from traitlets.config import LoggingConfigurable

from gateway.errors import IsolationNotAllowed, IsolationUnavailable
from gateway.provisioners.isolation import GVISOR, ISOLATIONS, RUNC

#: Isolations whose sandboxes never have network (runsc is registered with --network=none).
WITHOUT_NETWORK = frozenset({GVISOR})


class IsolationPolicy(LoggingConfigurable):
    default = CaselessStrEnum(
        list(ISOLATIONS), default_value=RUNC,
        help="The runtime docker sandboxes run under: runc (Docker's default) or gvisor (runsc: a kernel of its "
        "own between the sandbox and the host's; needs runsc registered, see deploy/host/ensure-docker.sh --runsc).",
    ).tag(config=True)
    allowed = List(
        CaselessStrEnum(list(ISOLATIONS)),
        help="Isolations a sandbox may ask for (\"isolation\" in POST /api/v1/sandboxes) besides the default.",
    ).tag(config=True)

    def offered(self) -> list[str]:
        """The isolations a request may name: the default and the allowed ones."""
        names = {str(self.default), *(str(name) for name in self.allowed)}
        return [name for name in ISOLATIONS if name in names]

    def requestable(self, unavailable: dict[str, str] | None) -> list[str]:
        """The isolations a request may name and this gateway can run (none for local processes)."""
        return [] if unavailable is None else [name for name in self.offered() if name not in unavailable]

    def resolve(self, requested: str | None, *, network: bool, unavailable: dict[str, str] | None) -> str | None:
        """The isolation of a new sandbox, or raise why it cannot have it.

        ``unavailable``: isolation -> why this gateway cannot run it; None when sandboxes here are
        local processes (the result is then None: no isolation at all, and none may be asked for).
        """
        if requested is not None and requested not in self.offered():
            raise IsolationNotAllowed(f"isolation {requested!r} is not allowed on this gateway "
                                      f"(allowed: {', '.join(self.offered())})")
        if unavailable is None:
            if requested is not None:
                raise IsolationUnavailable(f"isolation {requested!r} is not available: sandboxes on this gateway "
                                           "are local processes (provisioner local)")
            return None
        name = requested or str(self.default)
        if name in unavailable:
            raise IsolationUnavailable(f"isolation {name!r} is not available on this gateway: {unavailable[name]}")
        if network and name in WITHOUT_NETWORK:
            raise IsolationUnavailable(f"network access is not available with isolation {name!r} "
                                       "(its runtime runs sandboxes with no network)")
        return name

    def describe(self, unavailable: dict[str, str] | None) -> dict[str, object]:
        """For /health: the default, what may be asked for, and which runtimes this gateway can run."""
        problems = unavailable if unavailable is not None else {
            name: "sandboxes are local processes (provisioner local)" for name in ISOLATIONS}
        return {
            "default": str(self.default),
            "allowed": self.offered(),
            "available": [name for name in ISOLATIONS if name not in problems],
            "unavailable": dict(problems),
        }
