"""The Jupyter Server kernel API, as Jupyter Kernel Gateway serves it: each kernel is a sandbox's.

    jupyter lab --gateway-url=http://127.0.0.1:8888 --GatewayClient.auth_token=KEY

``GET /api``, ``GET /api/kernelspecs[/{name}]``, ``GET|POST /api/kernels``,
``GET|DELETE /api/kernels/{id}``, ``POST /api/kernels/{id}/interrupt|restart``; the kernel
WebSocket is in ``gateway.api.channels``. A kernel belongs to the key that started it and has
the same limits, auth (``Authorization: token KEY`` as Jupyter clients send it, or Bearer) and
history as any sandbox: code run from a notebook shows up in the sandbox's executions only if
it went through our REST/stream API, while the Jupyter WebSocket talks to the kernel directly.

A kernel is a sandbox's own (python3: its id is the sandbox's) or one of its contexts (its id
is the context's). ``POST /api/kernels {"name": "bash"}`` (any other kernelspec) starts a
sandbox on the image with every language and that context in it; deleting the kernel deletes
that sandbox. Contexts made through our API (``/api/v1/sandboxes/{id}/contexts``) are kernels too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import jupyter_server

from gateway.api.base import APIHandler
from gateway.api.forwarding import HolderRouting
from gateway.api.schemas import CREATE_SANDBOX, BodyValidator
from gateway.errors import NotFound, SandboxNotFound
from gateway.provisioners.launcher import KernelLauncher
from gateway.sandboxes.contexts import KERNELSPEC_LANGUAGES, LANGUAGES, Context, full_image
from gateway.sandboxes.inputs import check_env
from gateway.sandboxes.manager import STARTED_BY_JUPYTER, SandboxManager
from gateway.sandboxes.model import Sandbox, SandboxStatus

START_KERNEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "the kernelspec (python3, bash, ir, deno; default python3)"},
        "path": {"type": ["string", "null"], "description": "ignored: a path on the client's host"},
        "env": CREATE_SANDBOX["properties"]["env"],
    },
}
START_KERNEL = BodyValidator(START_KERNEL_SCHEMA)

#: ``metadata`` key of a sandbox started for a context's kernel: the kernelspec (its own kernel is not listed).
STARTED_FOR = "kernelspec"

#: Set by jupyter_server's gateway client to paths on *its* host; meaningless inside a sandbox.
HOST_SPECIFIC_ENV = {"KERNEL_WORKING_DIR"}


def started_for_a_context(sandbox: Sandbox) -> bool:
    """Whether ``POST /api/kernels`` started the sandbox for a context's kernel (it goes with that kernel)."""
    return sandbox.metadata.get("started_by") == STARTED_BY_JUPYTER and STARTED_FOR in sandbox.metadata


def startable_kernels(launcher: KernelLauncher) -> list[str]:
    """The kernelspecs ``POST /api/kernels`` starts: the sandboxes' own, and each context language's."""
    return [n for n in launcher.kernel_names() if n == launcher.kernel_name or n in KERNELSPEC_LANGUAGES]


def jupyter_time(moment: datetime) -> str:
    """Always with microseconds: jupyter_server's gateway client parses ``%Y-%m-%dT%H:%M:%S.%fZ`` strictly."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JupyterHandler(APIHandler):
    def initialize(self, sandboxes: SandboxManager, launcher: KernelLauncher, **base: Any) -> None:  # type: ignore[override]
        super().initialize(**base)
        self.sandboxes = sandboxes
        self.launcher = launcher

    def kernelspec(self, name: str | None = None) -> dict[str, Any]:
        assert self.launcher.spec_manager is not None
        name = name or self.launcher.kernel_name
        spec = self.launcher.spec_manager.get_kernel_spec(name).to_dict()
        spec["metadata"] = {k: v for k, v in spec.get("metadata", {}).items() if k != "kernel_provisioner"}
        return {"name": name, "spec": spec, "resources": {}}

    async def live_sandbox(self, kernel_id: str) -> Sandbox:
        """A kernel exists while its sandbox is not terminated (Jupyter has no record of ended kernels)."""
        sandbox = await self.sandboxes.get(kernel_id, self.user)
        if sandbox.status in (SandboxStatus.TERMINATING, SandboxStatus.TERMINATED):
            raise SandboxNotFound(kernel_id)
        return sandbox

    def context_model(self, context: Context) -> dict[str, Any]:
        km = context.runtime.km
        return {
            "id": context.id,
            "name": LANGUAGES[context.language],
            "last_activity": jupyter_time(km.last_activity),
            "execution_state": "dead" if context.failed else km.execution_state,
            "connections": self.sandboxes.kernels.connections(context.id),
        }

    def kernel_model(self, sandbox: Sandbox) -> dict[str, Any]:
        km = self.sandboxes.kernel_of(sandbox.id)
        # A kernel restarted after its death is "restarting", as in Jupyter Server, not "dead"; and it
        # stays "restarting" until the gateway's own connection reached the fresh kernel and the
        # sandbox runs again: a Jupyter socket may reach that kernel first (its idles would say
        # "idle" while the sandbox is still failed, and a death then would fail the restart).
        if km is not None and self.sandboxes.kernel_restarting(sandbox.id):
            state = "restarting"
        elif km is not None and sandbox.status == SandboxStatus.RUNNING:
            state = km.execution_state
        else:
            state = "idle" if sandbox.status == SandboxStatus.PAUSED else "dead"
        return {
            "id": sandbox.id,
            "name": self.launcher.kernel_name,
            "last_activity": jupyter_time(km.last_activity if km is not None else sandbox.last_active_at),
            "execution_state": state,
            "connections": self.sandboxes.kernels.connections(sandbox.id),
        }


class ApiHandler(JupyterHandler):
    auth_required = False

    def get(self) -> None:
        self.write_json({"version": jupyter_server.__version__})


class KernelSpecsHandler(JupyterHandler):
    """Every language's kernelspec (``python3``, ``bash``, ``ir``, ``deno``); a sandbox's own kernel is
    the default, the others run as contexts (``POST /api/kernels``, ``/api/v1/sandboxes/{id}/contexts``)."""

    def get(self) -> None:
        names = self.launcher.kernel_names()
        self.write_json({"default": self.launcher.kernel_name, "kernelspecs": {n: self.kernelspec(n) for n in names}})


class KernelSpecHandler(JupyterHandler):
    def get(self, name: str) -> None:
        if name not in self.launcher.kernel_names():
            raise NotFound(f"no kernelspec named {name!r}")
        self.write_json(self.kernelspec(name))


class KernelsHandler(JupyterHandler):
    async def get(self) -> None:
        sandboxes = await self.sandboxes.list_sandboxes(  # a paused kernel is listed: connecting resumes it
            self.user, statuses=[str(SandboxStatus.RUNNING), str(SandboxStatus.FAILED), str(SandboxStatus.PAUSED)]
        )
        models = []
        for sandbox in sandboxes:
            if not started_for_a_context(sandbox):
                models.append(self.kernel_model(sandbox))
            models += [self.context_model(c) for c in self.sandboxes.contexts.of(sandbox.id)]
        self.write_json(models)

    async def post(self) -> None:
        body = self.json_body(START_KERNEL, allow_empty=True)
        name = body.get("name", self.launcher.kernel_name)  # ("": no kernelspec's name, as Jupyter Server finds)
        startable = startable_kernels(self.launcher)
        if name not in startable:
            raise NotFound(f"no kernelspec named {name!r}: the kernelspecs are {', '.join(startable)}")
        env = {k: v for k, v in check_env(body.get("env")).items() if k not in HOST_SPECIFIC_ENV}
        if name == self.launcher.kernel_name:
            sandbox = await self.sandboxes.create(self.user, env=env, metadata={"started_by": STARTED_BY_JUPYTER})
            self.set_header("Location", f"/api/kernels/{sandbox.id}")
            self.write_json(self.kernel_model(sandbox), status=201)
            return
        # Another language: a context in a sandbox of its own, which goes when the context does
        # (idle, it is terminated: a pause would not keep the context).
        sandbox = await self.sandboxes.create(self.user, env=env, image=full_image(), on_idle="terminate",
                                              metadata={"started_by": STARTED_BY_JUPYTER, STARTED_FOR: name})
        try:
            made = await self.sandboxes.create_context(sandbox.id, self.user, KERNELSPEC_LANGUAGES[name])
        except BaseException:
            await self.sandboxes.terminate(sandbox.id, self.user)
            raise
        self.set_header("Location", f"/api/kernels/{made['id']}")
        self.write_json(self.context_model(self.sandboxes.contexts.get(sandbox.id, made["id"])), status=201)


class KernelHandler(HolderRouting, JupyterHandler):
    async def get(self, kernel_id: str) -> None:
        context = await self.sandboxes.find_context(kernel_id, self.user)
        if context is not None:
            self.write_json(self.context_model(context))
            return
        self.write_json(self.kernel_model(await self.live_sandbox(kernel_id)))

    async def delete(self, kernel_id: str) -> None:
        context = await self.sandboxes.find_context(kernel_id, self.user)
        if context is None:
            await self.live_sandbox(kernel_id)
            await self.sandboxes.terminate(kernel_id, self.user)
        elif started_for_a_context(await self.sandboxes.get(context.sandbox_id, self.user)):
            await self.sandboxes.terminate(context.sandbox_id, self.user)  # started for this kernel
        else:
            await self.sandboxes.remove_context(context.sandbox_id, self.user, kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(HolderRouting, JupyterHandler):
    async def post(self, kernel_id: str, action: str) -> None:
        context = await self.sandboxes.find_context(kernel_id, self.user)
        if context is None:
            await self.live_sandbox(kernel_id)
        if action == "interrupt":
            if context is None:
                await self.sandboxes.interrupt(kernel_id, self.user)
            else:
                await self.sandboxes.interrupt_context(context.sandbox_id, self.user, kernel_id)
            self.set_status(204)
            self.finish()
            return
        if context is None:
            self.write_json(self.kernel_model(await self.sandboxes.restart(kernel_id, self.user)))
            return
        await self.sandboxes.restart_context(context.sandbox_id, self.user, kernel_id)
        self.write_json(self.context_model(context))
