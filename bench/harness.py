"""What the benchmarks run against, started and stopped by the harness itself, on loopback only.

    async with Gateway(bench, pool_size=0) as gateway:         # code-gateway as a child process
        http = await gateway.connect()
    async with KernelGateway(bench) as kg:                      # Jupyter Kernel Gateway 3, its own venv
        kernel_id = await kg.start_kernel()
    async with RawKernels(bench) as raw:                        # kernels in our containers, no gateway
        kernel = await raw.start()                              # a started AsyncKernelClient

Each child gets a free loopback port and its own directory under the run's temporary directory;
containers carry a per-run ``code-gateway.instance`` label and are removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.clients import HttpConnection, raw_ready
from bench.measure import log

REPO = Path(__file__).resolve().parents[1]
KG_VENV = REPO / "bench" / ".venv-kg"
KG_REQUIREMENTS = ["jupyter-kernel-gateway==3.0.1", "ipykernel"]
INSTANCE_LABEL = "code-gateway.instance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_kg_venv() -> Path:
    """``bench/.venv-kg``: Jupyter Kernel Gateway 3 and ipykernel in a venv of their own, made once."""
    jupyter = KG_VENV / "bin" / "jupyter"
    if jupyter.exists():
        return jupyter
    log(f"creating {KG_VENV.relative_to(REPO)} with {' '.join(KG_REQUIREMENTS)}")
    subprocess.run(["python3", "-m", "venv", str(KG_VENV)], check=True)
    subprocess.run([str(KG_VENV / "bin" / "pip"), "install", "--quiet", *KG_REQUIREMENTS], check=True)
    return jupyter


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split among their users), in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


@dataclasses.dataclass
class Bench:
    """One run: its options, temporary directory, docker client, and what the scenarios found."""

    quick: bool
    only: list[str]
    tmp: Path = dataclasses.field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cgb-", dir="/tmp")))
    run_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    instances: set[str] = dataclasses.field(default_factory=set)
    #: Every server started, so none outlives the run whatever happened.
    children: list[ChildProcess] = dataclasses.field(default_factory=list)
    docker: Any = None

    def __post_init__(self) -> None:
        import docker

        self.docker = docker.from_env()

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def instance(self, role: str) -> str:
        """A container label value unique to this run and role; remembered for the final cleanup."""
        name = f"bench-{self.run_id}-{role}"
        self.instances.add(name)
        return name

    def containers(self, instance: str) -> list[Any]:
        return self.docker.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"})

    def remove_containers(self, instance: str) -> int:
        removed = 0
        for container in self.containers(instance):
            try:
                container.remove(force=True)
                removed += 1
            except Exception as exc:  # already going away
                log(f"  could not remove {container.name}: {exc}")
        return removed

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
        left = 0
        for instance in sorted(self.instances):
            left += self.remove_containers(instance)
        if left:
            log(f"removed {left} leftover container(s)")
        remaining = sum(len(self.containers(instance)) for instance in self.instances)
        log(f"cleanup: {remaining} container(s) of this run left" + (" (!)" if remaining else ""))
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.docker.close()


class ChildProcess:
    """A server as a child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, bench: Bench, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        bench.children.append(self)
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=str(REPO), start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def wait_http(self, port: int, path: str, timeout: float,
                        headers: dict[str, str] | None = None) -> None:
        """Until ``GET path`` answers 200; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ChildExited(self.name, self.process.returncode, self.tail())
            try:
                http = await HttpConnection.open(port, headers)
                try:
                    status, _ = await http.request("GET", path)
                finally:
                    await http.close()
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer on port {port} within {timeout:g} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group if the process still runs (the last resort of cleanup)."""
        if self.process is not None and self.process.poll() is None:
            log(f"  {self.name} still running at cleanup: killing it")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    async def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)
        except TimeoutError:
            log(f"  {self.name} ignored SIGTERM for {timeout:g} s: killing it")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class ChildExited(RuntimeError):
    def __init__(self, name: str, code: int, tail: str) -> None:
        super().__init__(f"{name} exited ({code}) before it answered:\n{tail}")
        self.tail = tail


class Gateway:
    """``code-gateway`` (the working tree's) as a child process: docker provisioner, its own data dir."""

    KEY = "bench-key"

    def __init__(self, bench: Bench, role: str, *, pool_size: int | None = None,
                 extra: list[str] | None = None, more_keys: tuple[str, ...] = ()) -> None:
        """``more_keys``: other keys of the bench user (such as an E2B-form one), besides ``KEY``."""
        self.bench = bench
        self.role = role
        self.instance = bench.instance(role)
        self.port = free_port()
        home = bench.tmp / role
        home.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "gateway", "--ip=127.0.0.1", f"--port={self.port}",
                f"--data-dir={home / 'data'}", f"--runtime-dir={home / 'run'}", "--provisioner=docker",
                "--api-keys=" + ",".join(f"bench:{key}" for key in (self.KEY, *more_keys)),
                "--max-sandboxes-per-user=500",
                f"--DockerProvisioner.instance_id={self.instance}", *(extra or [])]
        if pool_size is not None:
            argv.append(f"--pool-size={pool_size}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.child = ChildProcess(bench, f"gateway[{role}]", argv, env, home / "gateway.log")
        self.headers = {"Authorization": f"Bearer {self.KEY}"}

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Gateway:
        self.child.start()
        try:
            await self.child.wait_http(self.port, "/health", 90)
        except BaseException:
            await self.close()
            raise
        log(f"{self.child.name} up on port {self.port} (pid {self.pid})")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.child.stop()
        left = self.bench.remove_containers(self.instance)
        if left:
            log(f"  {self.child.name}: removed {left} container(s) it left")

    async def connect(self) -> HttpConnection:
        return await HttpConnection.open(self.port, self.headers)

    async def health(self) -> dict[str, Any]:
        http = await HttpConnection.open(self.port)
        try:
            return await http.json("GET", "/health")  # type: ignore[no-any-return]
        finally:
            await http.close()


class KernelGateway:
    """Jupyter Kernel Gateway 3 from ``bench/.venv-kg``; its kernels are local processes of that venv."""

    KEY = "bench-kg-key"

    def __init__(self, bench: Bench) -> None:
        jupyter = ensure_kg_venv()
        self.port = free_port()
        home = bench.tmp / "kg"
        home.mkdir(parents=True, exist_ok=True)
        argv = [str(jupyter), "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.port_retries=0",
                f"--KernelGatewayApp.auth_token={self.KEY}",
                "--JupyterWebsocketPersonality.list_kernels=True",
                "--ZMQChannelsWebsocketConnection.limit_rate=False"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GATEWAY_"))},
               "PATH": f"{KG_VENV / 'bin'}:{os.environ.get('PATH', '')}",
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data"),
               "JUPYTER_CONFIG_DIR": str(home / "config"), "IPYTHONDIR": str(home / "ipython")}
        env.pop("VIRTUAL_ENV", None)
        self.child = ChildProcess(bench, "kernel-gateway", argv, env, home / "kg.log")
        self.headers = {"Authorization": f"token {self.KEY}"}

    async def __aenter__(self) -> KernelGateway:
        self.child.start()
        try:
            await self.child.wait_http(self.port, "/api", 60, self.headers)
        except BaseException:
            await self.child.stop()
            raise
        log(f"kernel-gateway up on port {self.port} (pid {self.child.pid})")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.child.stop()

    async def start_kernel(self) -> str:
        http = await HttpConnection.open(self.port, self.headers)
        try:
            kernel = await http.json("POST", "/api/kernels", {"name": "python3"}, expect=201)
        finally:
            await http.close()
        return str(kernel["id"])

    def channels_url(self, kernel_id: str, session: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?session_id={session}"


class RawKernels:
    """Kernels in the same hardened containers, started by our provisioner (``KernelLauncher``), no gateway.

    The floor: what any client of a container kernel pays, reached with a long-lived
    jupyter_client ``AsyncKernelClient`` in this process.
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.instance = bench.instance("raw")
        self.launcher: Any = None
        self.kernels: dict[str, tuple[Any, Any]] = {}  # id -> (kernel manager, client)

    async def __aenter__(self) -> RawKernels:
        from traitlets.config import Config

        from gateway.provisioners.launcher import KernelLauncher

        config = Config()
        config.KernelLauncher.provisioner = "docker"
        config.DockerProvisioner.instance_id = self.instance
        runtime = self.bench.tmp / "raw"
        self.launcher = KernelLauncher(str(runtime), config=config)
        await self.launcher.start()
        if self.launcher.warnings:
            log(f"  raw kernels: {self.launcher.warnings}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(self.stop(kid) for kid in list(self.kernels)), return_exceptions=True)
        if self.launcher is not None:
            await self.launcher.stop()
        self.bench.remove_containers(self.instance)

    async def start(self) -> tuple[str, Any]:
        """A container kernel and a ready client for it: (id, AsyncKernelClient)."""
        from gateway.sandboxes.model import ResourceLimits, Sandbox

        sandbox = Sandbox(owner="bench", resources=ResourceLimits(), provisioner="docker")
        km = await self.launcher.launch(sandbox)
        self.kernels[sandbox.id] = (km, None)
        client = km.client(context=self.launcher.context)
        client.start_channels()
        await raw_ready(client)
        self.kernels[sandbox.id] = (km, client)
        return sandbox.id, client

    async def stop(self, kernel_id: str) -> None:
        km, client = self.kernels.pop(kernel_id)
        if client is not None:
            client.stop_channels()
        await self.launcher.dispose(km)


def container_memory(container_id: str) -> dict[str, int]:
    """A container's memory as ``docker stats`` counts it (usage minus inactive file pages), in bytes."""
    base = Path("/sys/fs/cgroup/memory/docker") / container_id
    if not base.is_dir():  # cgroup v2
        base = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope")
        usage = int((base / "memory.current").read_text())
        stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        return {"usage": usage, "working_set": usage - int(stat.get("inactive_file", 0)),
                "rss": int(stat.get("anon", 0))}
    usage = int((base / "memory.usage_in_bytes").read_text())
    stat = {k: int(v) for k, v in (line.split() for line in (base / "memory.stat").read_text().splitlines())}
    return {"usage": usage, "working_set": usage - stat.get("total_inactive_file", 0),
            "rss": stat.get("total_rss", 0)}


def container_cpu_seconds(container_id: str) -> float:
    """CPU time every process of a container has used so far (its cgroup's count)."""
    v1 = Path("/sys/fs/cgroup/cpuacct/docker") / container_id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    stat = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat").read_text()
    return int(dict(line.split() for line in stat.splitlines())["usage_usec"]) / 1e6


def shim_pss_kib(container_pid: int) -> int:
    """PSS of the container's ``containerd-shim`` (its init's parent): host memory each container costs."""
    status = Path(f"/proc/{container_pid}/status").read_text()
    ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes()
    if b"containerd-shim" not in cmdline:
        return 0
    return pss_kib(ppid)


def meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
