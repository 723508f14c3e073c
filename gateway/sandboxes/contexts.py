"""Contexts: several kernels in one sandbox, sharing its container (or directory), files and limits.

    contexts = SandboxContexts(launcher, settings)
    context = await contexts.create(sandbox, "bash", cwd="data", on_exit=...)   # a second kernel, running
    contexts.get(sandbox.id, context.id).runtime.run(execution, feed)             # its own queue
    await contexts.close_all(sandbox.id)                                         # at terminate / pause / stop

A sandbox's own kernel is its default context (``python``, id = the sandbox's id); every other
context is a ``SandboxRuntime`` of its own (own kernel, connection, execution queue: executions
in different contexts run side by side, those in one context one at a time), started by
``KernelLauncher.launch_context``. Contexts live as long as the sandbox runs: a pause, a
termination or a gateway restart ends them (a pause reports them among what it lost).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jupyter_client.kernelspec import NoSuchKernel

from gateway import __version__, timestamps
from gateway.errors import FileNotFound, GatewayError, InvalidRequest, NotFound, SandboxStartFailed
from gateway.execution.connection import KernelGone, SetupFailed
from gateway.provisioners.base import KernelExitedAtStart
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.model import Sandbox
from gateway.sandboxes.runtime import RuntimeSettings, SandboxRuntime

log = logging.getLogger(__name__)

#: Languages (as E2B names them) -> the kernelspec (in ``kernels/``) that runs them.
LANGUAGES = {"python": "python3", "bash": "bash", "r": "ir", "javascript": "deno", "typescript": "deno"}
#: Kernelspec names -> the language a Jupyter client starting one gets (``deno``: typescript, a superset of JavaScript).
KERNELSPEC_LANGUAGES = {spec: language for language, spec in LANGUAGES.items()}
#: Other names of languages, as E2B accepts them.
ALIASES = {"js": "javascript", "ts": "typescript", "py": "python", "python3": "python", "sh": "bash"}
#: Most contexts one sandbox may hold besides its own kernel.
MAX_CONTEXTS = 8
DEFAULT = "python"


def normalize_language(language: str | None) -> str:
    """E2B's normalization: none is python, names are lowercased, ``js``/``ts`` stand for their languages."""
    name = (language or DEFAULT).strip().lower()
    name = ALIASES.get(name, name)
    if name not in LANGUAGES:
        raise InvalidRequest(f"unknown language {language!r}: the languages are {', '.join(LANGUAGES)}")
    return name


def chdir_code(language: str, path: str) -> str:
    """Silent code that makes ``path`` (relative to the working directory) a kernel's current
    directory; the path is a JSON string literal in each language, never formatted otherwise."""
    literal = json.dumps(path or ".")
    if language == "python":
        return f"__import__('os').chdir({literal})"
    if language == "bash":
        return f"cd -- {shell_quote(path or '.')}"
    if language == "r":
        return f"setwd({literal})"
    return f"Deno.chdir({literal});"


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def full_image() -> str:
    """The image with every language's kernel (images/full)."""
    return f"code-gateway/full:{__version__}"


#: Where the languages are.
FULL_IMAGE_HINT = "the code-gateway/full image has every language (E2B's code-interpreter-v1 template runs it)"


class LanguageUnavailable(GatewayError):
    """The sandbox's image cannot run that language's kernel."""

    status = 409
    code = "language_unavailable"


class DefaultContext(GatewayError):
    """The default context is the sandbox's own kernel: it goes only with the sandbox."""

    status = 409
    code = "default_context"


class ContextNotFound(NotFound):
    code = "context_not_found"

    def __init__(self, sandbox_id: str, context_id: str) -> None:
        super().__init__(f"no context {context_id!r} in sandbox {sandbox_id}")
        self.context_id = context_id


@dataclasses.dataclass
class Context:
    id: str
    sandbox_id: str
    language: str
    #: The context's working directory, relative to the sandbox's.
    cwd: str
    runtime: SandboxRuntime
    created_at: datetime = dataclasses.field(default_factory=timestamps.now)
    #: Why it stopped (its kernel died, say); None while it runs.
    failed: str | None = None

    def to_public(self) -> dict[str, Any]:
        return {"id": self.id, "sandbox_id": self.sandbox_id, "language": self.language, "cwd": self.cwd,
                "status": "failed" if self.failed else "running", "status_reason": self.failed,
                "default": False, "created_at": timestamps.to_iso(self.created_at)}


def default_context(sandbox: Sandbox) -> dict[str, Any]:
    """A sandbox's own kernel, as a context: in the sandbox's status (paused with it, say)."""
    return {"id": sandbox.id, "sandbox_id": sandbox.id, "language": DEFAULT, "cwd": "",
            "status": str(sandbox.status), "status_reason": sandbox.status_reason,
            "default": True, "created_at": timestamps.to_iso(sandbox.created_at)}


class SandboxContexts:
    """Every sandbox's extra contexts, by sandbox id and context id."""

    def __init__(self, launcher: KernelLauncher, settings: RuntimeSettings) -> None:
        self.launcher = launcher
        self.settings = settings
        self._contexts: dict[str, dict[str, Context]] = {}

    def of(self, sandbox_id: str) -> list[Context]:
        return sorted(self._contexts.get(sandbox_id, {}).values(), key=lambda c: c.created_at)

    def get(self, sandbox_id: str, context_id: str) -> Context:
        context = self._contexts.get(sandbox_id, {}).get(context_id)
        if context is None:
            raise ContextNotFound(sandbox_id, context_id)
        return context

    def find(self, context_id: str) -> Context | None:
        """The context with this id, in whichever sandbox (a Jupyter client knows only the id)."""
        return next((found for contexts in self._contexts.values() if (found := contexts.get(context_id))), None)

    def by_language(self, sandbox_id: str, language: str) -> Context | None:
        """The oldest context of ``language`` (what ``"language"`` on an execution runs in)."""
        return next((c for c in self.of(sandbox_id) if c.language == language), None)

    async def create(self, sandbox: Sandbox, language: str, cwd: str = "",
                     on_exit: Callable[[Context, str], None] | None = None) -> Context:
        """Start a kernel for ``language`` inside the running ``sandbox``, in ``cwd``."""
        if len(self._contexts.get(sandbox.id, {})) >= MAX_CONTEXTS:
            raise InvalidRequest(f"sandbox {sandbox.id} has {MAX_CONTEXTS} contexts already: remove one first")
        context_id = str(uuid.uuid4())
        try:
            km = await self.launcher.launch_context(sandbox, context_id, LANGUAGES[language])
        except NoSuchKernel:
            raise InvalidRequest(f"this gateway has no kernelspec for {language}") from None
        except (KernelExitedAtStart, FileNotFoundError):  # (FileNotFoundError: a local kernel's program)
            raise LanguageUnavailable(f"this sandbox's image has no {language} kernel (its kernel did not "
                                      f"start); {FULL_IMAGE_HINT}") from None
        except GatewayError:
            raise
        except Exception as exc:
            log.warning("sandbox %s: a %s context did not start", sandbox.id, language, exc_info=True)
            raise SandboxStartFailed(f"the {language} kernel did not start in this sandbox "
                                     f"({type(exc).__name__}); {FULL_IMAGE_HINT}") from None
        holder: list[Context] = []

        def exited(reason: str) -> None:
            if holder:
                holder[0].failed = reason
                if on_exit is not None:
                    on_exit(holder[0], reason)

        runtime = SandboxRuntime(sandbox, km, self.launcher, self.settings, on_exit=exited)
        runtime.language = language
        try:
            await runtime.connect()
            if cwd and not await self._enter(runtime, language, cwd):
                raise FileNotFound(f"cwd {cwd!r} is not a directory in sandbox {sandbox.id} (make it first)")
        except BaseException as exc:
            await runtime.close()
            if isinstance(exc, GatewayError):
                raise
            if isinstance(exc, KernelGone) and exc.reason == "kernel_died":
                # Gone before it answered, and not for memory: the image has no such kernel.
                raise LanguageUnavailable(f"this sandbox's image has no {language} kernel (its kernel did not "
                                          f"start); {FULL_IMAGE_HINT}") from None
            if isinstance(exc, Exception):
                raise SandboxStartFailed(f"the {language} context did not answer: {exc}") from None
            raise
        context = Context(context_id, sandbox.id, language, cwd, runtime)
        holder.append(context)
        self._contexts.setdefault(sandbox.id, {})[context_id] = context
        log.info("sandbox %s: %s context %s started", sandbox.id, language, context_id)
        return context

    async def restart(self, context: Context, again: Callable[[], None] | None = None) -> None:
        """A fresh kernel for the context, in its directory; its running and queued executions are
        cancelled. (``again``: as for ``SandboxRuntime.restart``.)"""
        await context.runtime.restart(again=again)
        context.failed = None
        if context.cwd and not await self._enter(context.runtime, context.language, context.cwd):
            # Its directory was removed since: the fresh kernel works in the sandbox's (what the reply says).
            log.warning("sandbox %s: context %s restarted without its directory %r (gone)",
                        context.sandbox_id, context.id, context.cwd)
            context.cwd = ""

    async def _enter(self, runtime: SandboxRuntime, language: str, cwd: str) -> bool:
        """Make ``cwd`` a connected kernel's current directory; False if it is not a directory there."""
        assert runtime.connection is not None
        try:
            await runtime.connection.run_silent(chdir_code(language, cwd), timeout=self.settings.connect_timeout)
        except SetupFailed:
            return False
        return True

    async def remove(self, context: Context) -> None:
        self._contexts.get(context.sandbox_id, {}).pop(context.id, None)
        await context.runtime.close()
        log.info("sandbox %s: context %s removed", context.sandbox_id, context.id)

    async def close_all(self, sandbox_id: str, reason: str = "terminated") -> list[Context]:
        """Stop every context of the sandbox (it ends, pauses, or the gateway stops); the ones closed."""
        closed = list(self._contexts.pop(sandbox_id, {}).values())
        for context in closed:
            try:
                await context.runtime.close(reason=reason)
            except Exception:
                log.exception("sandbox %s: could not stop context %s", sandbox_id, context.id)
        return closed

    def busy(self, sandbox_id: str) -> bool:
        return any(c.runtime.busy for c in self._contexts.get(sandbox_id, {}).values())
