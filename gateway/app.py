"""``code-gateway``: the application. Traits and wiring only; the work is in the components.

    code-gateway --ip=127.0.0.1 --port=8888 --provisioner=docker
    code-gateway keys create alice

In tests and embedders::

    app = GatewayApp()
    app.initialize(["--port=0", "--data-dir=/tmp/x"])
    await app.startup()          # listening on app.bound_port
    await app.shutdown()
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from tornado.netutil import bind_sockets
from traitlets import CaselessStrEnum, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Application, catch_config_error

from gateway import __version__
from gateway.allocator import FreedMemory
from gateway.api.backpressure import DEFAULT_SEND_BUFFER
from gateway.api.bodies import CHUNK, DEFAULT_BODY_BUDGET, BoundedBodiesApplication
from gateway.api.e2b.templates import E2BTemplates
from gateway.api.routes import make_app
from gateway.api.server import GatewayHTTPServer
from gateway.auth import KEY_FORMATS, KeyRing
from gateway.config import env_config
from gateway.mcp.server import McpService
from gateway.metrics import GatewayMetrics
from gateway.provisioners.docker import DockerProvisioner
from gateway.provisioners.kubernetes import KubernetesProvisioner
from gateway.provisioners.launcher import KernelLauncher, check_runtime_dir, default_runtime_dir
from gateway.replica import Replica, ReplicaInUse
from gateway.sandboxes.lifetimes import LifetimePolicy
from gateway.sandboxes.isolation import IsolationPolicy
from gateway.sandboxes.limits import ResourcePolicy
from gateway.events.log import EventLog
from gateway.events.webhooks import WebhookSender
from gateway.sandboxes.commands import SandboxCommands
from gateway.sandboxes.files import SandboxFiles
from gateway.sandboxes.history import HistoryRetention
from gateway.sandboxes.leases import WEBHOOKS_LEASE, LeaseKeeper
from gateway.sandboxes.manager import SandboxManager
from gateway.sandboxes.processes import SandboxProcesses
from gateway.sandboxes.pool import WarmPool
from gateway.sandboxes.quotas import UserQuotas
from gateway.sandboxes.reaper import SandboxReaper
from gateway.sandboxes.snapshots import SandboxSnapshots
from gateway.store import urls
from gateway.store.base import Store

log = logging.getLogger("gateway")
T = TypeVar("T")

#: Seconds open requests get to finish their answers at shutdown.
CLOSE_CONNECTIONS_WITHIN = 10.0

ALIASES = {
    "ip": "GatewayApp.ip",
    "port": "GatewayApp.port",
    "data-dir": "GatewayApp.data_dir",
    "store-url": "GatewayApp.store_url",
    "replica-id": "GatewayApp.replica_id",
    "replica-address": "GatewayApp.replica_address",
    "paused-dir": "GatewayApp.paused_dir",
    "lease-timeout": "LeaseKeeper.timeout",
    "runtime-dir": "GatewayApp.runtime_dir",
    "config": "GatewayApp.config_file",
    "keepalive": "GatewayApp.keepalive",
    "allow-origins": "GatewayApp.allow_origins",
    "max-send-buffer-bytes": "GatewayApp.max_send_buffer_bytes",
    "max-connections": "GatewayApp.max_connections",
    "idle-connection-timeout": "GatewayApp.idle_connection_timeout",
    "max-buffered-body-bytes": "GatewayApp.max_buffered_body_bytes",
    "log-level": "Application.log_level",
    "api-keys": "KeyRing.api_keys",
    "provisioner": "KernelLauncher.provisioner",
    "max-sandboxes-per-user": "UserQuotas.max_sandboxes",
    "max-cpu-per-user": "UserQuotas.max_cpu",
    "max-memory-mb-per-user": "UserQuotas.max_memory_mb",
    "max-paused-per-user": "UserQuotas.max_paused",
    "max-executions-per-minute": "UserQuotas.max_executions_per_minute",
    "webhook-url": "WebhookSender.urls",
    "webhook-secret": "WebhookSender.secret",
    "event-retention": "EventLog.retention",
    "history-retention": "HistoryRetention.retention",
    "default-lifetime": "LifetimePolicy.default_lifetime",
    "max-lifetime": "LifetimePolicy.max_lifetime",
    "idle-timeout": "LifetimePolicy.default_idle_timeout",
    "pool-size": "WarmPool.size",
    "max-file-bytes": "SandboxFiles.max_file_bytes",
    "max-cpu": "ResourcePolicy.max_cpu",
    "max-memory-mb": "ResourcePolicy.max_memory_mb",
    "max-disk-mb": "ResourcePolicy.max_disk_mb",
    "max-timeout": "ResourcePolicy.max_timeout",
    "allow-network": "ResourcePolicy.allow_network",
    "runtime": "IsolationPolicy.default",
    "allow-isolation": "IsolationPolicy.allowed",
    "image": "DockerProvisioner.image",
}


class ConfiguredApp(Application):
    """An Application that also reads ``GATEWAY_*`` variables and an optional config file."""

    config_file = Unicode("", help="A Python config file (c.GatewayApp.port = ...).").tag(config=True)

    data_dir = Unicode(".gateway-data", help="Where the gateway keeps its state: the SQLite database "
                       "(unless --store-url names another store) and paused sandboxes.").tag(config=True)
    store_url = Unicode("", help="The store: sqlite:///PATH, or postgresql://USER@HOST:PORT/DB to share it "
                        "between replicas (default: SQLite in the data directory).").tag(config=True)

    @validate("store_url")
    def _valid_store_url(self, proposal: Any) -> str:
        try:
            return urls.check_url(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"--store-url: {exc}") from None

    def open_store(self) -> Store:
        """The store this app's options name (not opened yet)."""
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        return urls.open_store(self.store_url, self.data_dir)

    @catch_config_error
    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        command_line = copy.deepcopy(self.config)
        if self.config_file:
            self.load_config_file(self.config_file)
        self.update_config(env_config(os.environ, self.aliases, self._classes_with_config_traits()))
        self.update_config(command_line)


class KeysApp(ConfiguredApp):
    name = "code-gateway keys"
    description = ("Manage API keys: `code-gateway keys create USER [--format e2b]` prints a new key for USER, "
                   "once (--format e2b: an e2b_... key, for the E2B SDKs; it works on our API too). "
                   "`code-gateway keys revoke KEY` removes that key, `code-gateway keys revoke --user USER` every "
                   "key of USER: every gateway sharing the store refuses them within --KeyRing.cache_seconds.")
    timeout = Float(30.0, help="Seconds to wait for the store to take the change.").tag(config=True)
    key_format = CaselessStrEnum(list(KEY_FORMATS), default_value="gateway",
                                 help="The key's form: gateway (cig_...) or e2b (e2b_ + 40 hex digits).").tag(config=True)
    user = Unicode("", help="keys revoke: the user whose keys are all revoked.").tag(config=True)
    aliases = {"data-dir": "KeysApp.data_dir", "store-url": "KeysApp.store_url", "config": "KeysApp.config_file",
               "format": "KeysApp.key_format", "user": "KeysApp.user"}
    USAGE = ("usage: code-gateway keys create USER [--format gateway|e2b]\n"
             "       code-gateway keys revoke KEY | --user USER")

    def start(self) -> None:
        match self.extra_args:
            case ["create", user]:
                print(asyncio.run(self._with_keyring(lambda keys: keys.create(user, str(self.key_format)))))
            case ["revoke", key] if not self.user:
                removed = asyncio.run(self._with_keyring(lambda keys: keys.revoke(key=key)))
                sys.exit(0 if removed else "no such key in the store (keys given in --api-keys are configuration)")
            case ["revoke"] if self.user:
                removed = asyncio.run(self._with_keyring(lambda keys: keys.revoke(user=self.user)))
                print(f"revoked {removed} key{'s' if removed != 1 else ''} of {self.user}")
            case _:
                sys.exit(self.USAGE)

    async def _with_keyring(self, change: Callable[[KeyRing], Awaitable[T]]) -> T:
        store = self.open_store()
        await store.open()
        try:
            async with asyncio.timeout(self.timeout):
                return await change(KeyRing(store=store, parent=self))
        except TimeoutError:
            sys.exit(f"the store did not take the change within {self.timeout:g} s: {store.problem}")
        finally:
            await store.close()


class GatewayApp(ConfiguredApp):
    name = "code-gateway"
    version = __version__
    description = "Code Interpreter Gateway: stateful sandboxed Jupyter kernels over REST, streams and WebSockets."

    ip = Unicode("127.0.0.1", help="Address to listen on.").tag(config=True)
    port = Int(8888, help="Port to listen on (0: any free port).").tag(config=True)
    runtime_dir = Unicode(help="Short local directory for kernel sockets (default: derived from data_dir).").tag(
        config=True
    )
    max_body_size = Int(64 << 20, help="Largest request body accepted, in bytes.").tag(config=True)
    max_connections = Int(4096, help="Most client connections open at once (WebSockets and streams included); "
                          "one over it is closed at once, those open go on.").tag(config=True)
    idle_connection_timeout = Float(
        75.0, help="Seconds a client connection may wait without sending a request's headers (before its first "
        "request, between two on a kept-alive connection), or without sending more of a body it began, before "
        "the gateway closes it."
    ).tag(config=True)
    max_buffered_body_bytes = Int(
        DEFAULT_BODY_BUDGET, help="Most bytes of request bodies held in memory at once, over all connections "
        "(a streamed upload holds one 64 KiB chunk at a time); a request past it is answered 503 server_busy "
        "with Retry-After once its body has been read. At least --GatewayApp.max_body_size."
    ).tag(config=True)
    keepalive = Float(15.0, help="Seconds of silence after which a stream sends a keepalive.").tag(config=True)
    max_send_buffer_bytes = Int(
        DEFAULT_SEND_BUFFER, help="Most bytes a streaming client (NDJSON, SSE, /stream, Jupyter channels) may fall "
        "behind what it was sent; past it, it is cut off (WebSocket close 1008) and the executions go on."
    ).tag(config=True)
    allow_origins = List(
        Unicode(), help="Browser origins (besides the gateway's own) allowed on WebSockets; '*' for any."
    ).tag(config=True)
    replica_id = Unicode(
        "", help="This replica's id among the gateways sharing a store (default: a UUID made once and kept in "
        "the data directory). It names the holder of its sandboxes' leases and labels its containers."
    ).tag(config=True)
    paused_dir = Unicode(
        "", help="Where paused sandboxes keep their files and variables (default: <data-dir>/paused). Replicas "
        "sharing a store should share it too (a shared filesystem): then any of them resumes any paused sandbox, "
        "also after the one that paused it is gone."
    ).tag(config=True)
    replica_address = Unicode(
        "", help="The URL other replicas forward requests for this replica's sandboxes to, e.g. "
        "http://10.0.0.5:8888 (default: http://<--ip>:<port>, or this host's name when --ip is a wildcard)."
    ).tag(config=True)

    aliases = ALIASES
    flags = {
        "keep-sandboxes": (
            {"SandboxManager": {"keep_on_shutdown": True}},
            "Leave sandbox kernels running at shutdown, to re-attach at the next start.",
        ),
    }
    classes = [KernelLauncher, DockerProvisioner, KubernetesProvisioner, SandboxManager, WarmPool, SandboxFiles, ResourcePolicy,
               IsolationPolicy, LifetimePolicy, SandboxReaper, SandboxSnapshots, UserQuotas, EventLog, WebhookSender, KeyRing,
               E2BTemplates, LeaseKeeper, HistoryRetention, FreedMemory]
    subcommands = {"keys": (KeysApp, KeysApp.description)}

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @default("runtime_dir")
    def _runtime_dir_default(self) -> str:
        return default_runtime_dir(self.data_dir)

    @validate("max_connections")
    def _some_connections(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"--max-connections must be at least 1, not {proposal['value']}")
        return int(proposal["value"])

    @validate("idle_connection_timeout")
    def _positive_idle_timeout(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise TraitError(f"--idle-connection-timeout must be more than 0 seconds, not {proposal['value']}")
        return float(proposal["value"])

    @catch_config_error
    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        # (checked once every option is in: the two may come from different places)
        least = max(self.max_body_size, CHUNK)
        if self.subapp is None and self.max_buffered_body_bytes < least:
            raise TraitError(f"--max-buffered-body-bytes is {self.max_buffered_body_bytes}, under {least}: the "
                             "largest body accepted (--GatewayApp.max_body_size) or a streamed upload's chunk "
                             "could never be held, and would be refused for good")

    @validate("runtime_dir")
    def _short_runtime_dir(self, proposal: Any) -> str:
        try:
            return check_runtime_dir(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"--runtime-dir: {exc}") from None

    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        try:
            asyncio.run(self.serve())
        except (ReplicaInUse, TraitError) as exc:  # (an option checked at start: its message names it)
            sys.exit(f"code-gateway: {exc}")

    async def serve(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        def stop_soon() -> None:
            # A second signal kills the process the default way, should a shutdown ever hang.
            for signum in signals:
                loop.remove_signal_handler(signum)
            stop.set()

        for signum in signals:
            loop.add_signal_handler(signum, stop_soon)
        await self.startup()
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        self._stopped = False
        logging.basicConfig(level=cast(int, self.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # (older names of the replica id, from when it only labelled containers)
        self.replica = Replica.claim(self.data_dir, id_=self.replica_id or DockerProvisioner(parent=self).instance_id
                                     or KubernetesProvisioner(parent=self).instance_id)
        # Bound first: the address goes into the store with the first heartbeat. Connections wait in
        # the backlog until the gateway serves.
        try:
            sockets = bind_sockets(self.port, address=self.ip)
        except BaseException:
            self.replica.release()
            raise
        try:
            await self._start_serving(sockets)
        except BaseException:  # (what started is stopped by the step that failed; these are ours)
            for sock in sockets:
                sock.close()
            self.replica.release()
            raise

    async def _start_serving(self, sockets: list[socket.socket]) -> None:
        self.bound_port = sockets[0].getsockname()[1]
        self.replica.address = self.replica_address or self.default_address()
        self.store = self.open_store()
        self.history = HistoryRetention(store=self.store, parent=self)  # (a bad option: stops before it opens)
        await self.store.open()
        self.keyring = KeyRing(store=self.store, parent=self)
        await self.keyring.start()
        self.policy = ResourcePolicy(parent=self)
        self.metrics = GatewayMetrics()
        self.launcher = KernelLauncher(self.runtime_dir, metrics=self.metrics, instance_id=self.replica.id, parent=self)
        await self.launcher.start()
        isolation = IsolationPolicy(parent=self)
        problem = self._default_isolation_problem(isolation)
        if problem is not None:
            await self.launcher.stop()
            await self.store.close()
            raise RuntimeError(problem)
        commands = SandboxCommands(self.launcher)
        snapshots = SandboxSnapshots(commands=commands, root=self.paused_dir or os.path.join(self.data_dir, "paused"),
                                     kernels_dir=self.launcher.kernels_dir, parent=self)
        self.events = EventLog(store=self.store, parent=self)
        self.events.start()
        self.history.start()
        # Before the sandboxes start: what their recovery changes is delivered too.
        leases = LeaseKeeper(store=self.store, replica=self.replica, parent=self)
        # One replica delivers the webhooks: the holder of the "webhooks" lease (another takes it if it dies).
        self.webhooks = WebhookSender(store=self.store, events=self.events, metrics=self.metrics, parent=self,
                                      leader=lambda: leases.claim(WEBHOOKS_LEASE), leader_interval=leases.period)
        await self.webhooks.start()
        self.sandboxes = SandboxManager(store=self.store, launcher=self.launcher, policy=self.policy,
                                        lifetimes=LifetimePolicy(parent=self), snapshots=snapshots,
                                        quotas=UserQuotas(store=self.store, parent=self), events=self.events,
                                        metrics=self.metrics, isolation=isolation, parent=self,
                                        leases=leases)
        await self.sandboxes.start()
        self.files = SandboxFiles(sandboxes=self.sandboxes, commands=commands, parent=self)
        self.processes = SandboxProcesses(commands)
        self.mcp = McpService(sandboxes=self.sandboxes, files=self.files)
        await self.mcp.start()
        self.web_app = make_app(keyring=self.keyring, sandboxes=self.sandboxes, launcher=self.launcher,
                                files=self.files, keepalive=self.keepalive, allow_origins=self.allow_origins,
                                mcp=self.mcp, max_send_buffer=self.max_send_buffer_bytes,
                                e2b_templates=E2BTemplates(parent=self), processes=self.processes)
        self.bodies = BoundedBodiesApplication(self.web_app, limit=self.max_buffered_body_bytes,
                                               stall_timeout=self.idle_connection_timeout,
                                               allow_origins=self.allow_origins)
        self.server = GatewayHTTPServer(self.bodies, max_connections=self.max_connections,
                                        idle_connection_timeout=self.idle_connection_timeout,
                                        max_body_size=self.max_body_size)
        self.server.add_sockets(sockets)
        self.freed_memory = FreedMemory(parent=self)
        self.freed_memory.start()
        log.info("Code Interpreter Gateway %s on http://%s:%d (provisioner: %s, replica %s at %s)",
                 __version__, self.ip, self.bound_port, self.launcher.resolved, self.replica.id, self.replica.address)
        if self.keyring.generated_key:
            print(
                "\nNo API key is configured, so this run made one for the user 'admin':\n"
                f"    Authorization: Bearer {self.keyring.generated_key}\n"
                "Set GATEWAY_API_KEYS=user:key,... or run `code-gateway keys create USER` to choose your own.\n",
                flush=True,
            )

    def _default_isolation_problem(self, isolation: IsolationPolicy) -> str | None:
        """Why sandboxes cannot run under the operator's default isolation here (then the gateway does not
        start: it never runs them under less isolation than chosen); None if they can."""
        unavailable = self.launcher.unavailable()
        if unavailable is None:
            if isolation.default != "runc":
                return f"--runtime={isolation.default} needs the docker provisioner: sandboxes here would be local processes"
            return None
        if isolation.default in unavailable:
            return (f"--runtime={isolation.default}: {unavailable[isolation.default]} "
                    "(bash deploy/host/ensure-docker.sh --runsc registers runsc)")
        return None

    async def shutdown(self) -> None:
        """Stop listening, stop every sandbox, then close what is left; every step is bounded. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop()
        await self.freed_memory.stop()
        await self.mcp.stop()
        await self.files.stop()
        await self.processes.stop()
        await self.sandboxes.stop()
        await self.launcher.stop()
        await self.webhooks.stop()  # what it did not deliver waits in the outbox for the next start
        await self.events.stop()  # (ends the event streams)
        await self.history.stop()
        try:
            # Requests still open (their executions just ended) finish their answers.
            async with asyncio.timeout(CLOSE_CONNECTIONS_WITHIN):
                await self.server.close_all_connections()
        except TimeoutError:
            log.warning("connections still open %g s after shutdown began; closing the store anyway",
                        CLOSE_CONNECTIONS_WITHIN)
        await self.store.close()
        self.replica.release()
        log.info("gateway stopped")

    def default_address(self) -> str:
        """Where other replicas reach this one when --replica-address is not given."""
        host = socket.gethostname() if self.ip in ("", "0.0.0.0", "::") else self.ip
        return f"http://{f'[{host}]' if ':' in host else host}:{self.bound_port}"


def main() -> None:
    GatewayApp.launch_instance()


if __name__ == "__main__":
    main()
