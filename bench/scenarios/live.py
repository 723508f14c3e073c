"""Live kernels behind every method the round-trip benchmarks compare, each with its own kernel.

    async with Live(bench) as live:
        await live.methods["rest"]("1+1", "2")     # one execution, checked; raises on any failure

Methods: ``rest``, ``ndjson``, ``ws`` (our /stream) and ``jupyter_ws`` (our Jupyter channels)
against one gateway (pool off, so nothing starts in the background); ``raw`` (jupyter_client on a
kernel in the same kind of container, no gateway: the floor); ``kg`` (Jupyter Kernel Gateway 3
over its channels WebSocket; its kernel is a local process, not a container).
A kernel per method, so no method's traffic reaches another's client (a Jupyter channels socket
receives every iopub message of its kernel). ``e2b``: the real ``e2b-code-interpreter`` SDK's
``AsyncSandbox.run_code`` against the same gateway's E2B dialect. ``kg_quickack`` is Kernel Gateway again with a client
that acknowledges every message at once: Kernel Gateway leaves Nagle's algorithm on (Tornado's
default for WebSockets), so its second message per execute otherwise waits ~40 ms for the
client's delayed ACK; this row shows what it costs without that.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench import clients
from bench.harness import Bench, Gateway, KernelGateway, RawKernels
from bench.measure import log

Method = Callable[[str, "str | None"], Awaitable[Any]]
#: The benchmark user's E2B key (E2B's form: e2b_ and 40 hex digits).
E2B_KEY = "e2b_" + "be" * 20

LABELS = {
    "rest": "gateway REST execute",
    "ndjson": "gateway NDJSON stream",
    "ws": "gateway WebSocket (/stream)",
    "jupyter_ws": "gateway Jupyter channels WS",
    "e2b": "E2B SDK run_code (AsyncSandbox, /e2b)",
    "raw": "raw jupyter_client (container kernel)",
    "kg": "Jupyter Kernel Gateway 3 WS",
    "kg_quickack": "Kernel Gateway 3 WS, client TCP_QUICKACK",
}


#: The methods that relay big outputs (the E2B SDK is measured on round trips only: its results are its own objects).
RELAY_METHODS = ("rest", "ndjson", "ws", "jupyter_ws", "raw", "kg", "kg_quickack")
#: Output caps that let the big-output scenarios through whole (32 MiB per output, 64 MiB per execution).
BIG_OUTPUT_CAPS = ["--SandboxManager.max_output_bytes=33554432", "--SandboxManager.max_execution_output_bytes=67108864"]


def pool_args() -> dict[str, Any]:
    """``pool_size=0`` where the gateway has a warm pool (so it starts nothing in the background)."""
    from gateway.app import ALIASES

    return {"pool_size": 0} if "pool-size" in ALIASES else {}


class Live:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.methods: dict[str, Method] = {}
        self.stack = contextlib.AsyncExitStack()
        self.gateway: Gateway | None = None
        #: The server process behind each method (for CPU accounting); raw has none.
        self.servers: dict[str, int] = {}

    async def __aenter__(self) -> Live:
        try:
            await self._open()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stack.aclose()

    async def _open(self) -> None:
        stack = self.stack
        gateway = self.gateway = await stack.enter_async_context(
            Gateway(self.bench, "live", more_keys=(E2B_KEY,), extra=BIG_OUTPUT_CAPS, **pool_args()))
        http = await gateway.connect()
        stack.push_async_callback(http.close)
        ids = {}
        for name in ("rest", "ndjson", "ws"):
            ids[name] = (await clients.create_sandbox(http))["id"]
        kernel = await http.json("POST", "/api/kernels", {"name": "python3"}, expect=201)
        ids["jupyter_ws"] = kernel["id"]
        log(f"  gateway sandboxes ready: {', '.join(f'{k}={v[:8]}' for k, v in ids.items())}")
        self.servers.update(dict.fromkeys(ids, gateway.pid))

        rest_http = await gateway.connect()
        stack.push_async_callback(rest_http.close)
        self.methods["rest"] = lambda code, expect: clients.rest_execute(rest_http, ids["rest"], code, expect)
        ndjson_http = await gateway.connect()
        stack.push_async_callback(ndjson_http.close)
        self.methods["ndjson"] = lambda code, expect: clients.ndjson_execute(
            ndjson_http, ids["ndjson"], code, expect)
        ws = await stack.enter_async_context(
            clients.ws_connect(f"{gateway.ws_base}/api/v1/sandboxes/{ids['ws']}/stream", gateway.headers))
        self.methods["ws"] = lambda code, expect: clients.ws_execute(ws, code, expect)
        session = uuid.uuid4().hex
        channels_url = f"{gateway.ws_base}/api/kernels/{ids['jupyter_ws']}/channels?session_id={session}"
        channels = await stack.enter_async_context(clients.ws_connect(channels_url, gateway.headers))
        self.methods["jupyter_ws"] = lambda code, expect: clients.channels_execute(
            channels, code, session, expect)

        await self._open_e2b(gateway)

        raw = await stack.enter_async_context(RawKernels(self.bench))
        _, raw_client = await raw.start()
        log("  raw container kernel ready")
        self.methods["raw"] = lambda code, expect: clients.raw_execute(raw_client, code, expect)

        try:
            kg = await stack.enter_async_context(KernelGateway(self.bench))
            kg_kernel = await kg.start_kernel()
            kg_session = uuid.uuid4().hex
            kg_socket = await stack.enter_async_context(
                clients.ws_connect(kg.channels_url(kg_kernel, kg_session), kg.headers))
            self.methods["kg"] = lambda code, expect: clients.channels_execute(
                kg_socket, code, kg_session, expect)
            self.servers["kg"] = kg.child.pid
            kg_kernel2 = await kg.start_kernel()
            kg_session2 = uuid.uuid4().hex
            kg_socket2 = await stack.enter_async_context(
                clients.ws_connect(kg.channels_url(kg_kernel2, kg_session2), kg.headers))
            self.methods["kg_quickack"] = lambda code, expect: clients.channels_execute(
                kg_socket2, code, kg_session2, expect, ack_at_once=True)
            self.servers["kg_quickack"] = kg.child.pid
            log("  kernel-gateway kernel ready")
        except Exception as exc:
            log(f"  Kernel Gateway unavailable, comparing without it: {exc}")

    async def _open_e2b(self, gateway: Gateway) -> None:
        """The real E2B SDK against the gateway's E2B dialect (a sandbox of the default image, as REST's)."""
        from e2b_code_interpreter import AsyncSandbox

        base = f"http://127.0.0.1:{gateway.port}"
        sandbox = await AsyncSandbox.create(template="base", timeout=3600, api_key=E2B_KEY, api_url=f"{base}/e2b",
                                            sandbox_url=f"{base}/e2b/sandbox")
        self.stack.push_async_callback(sandbox.kill)
        self.servers["e2b"] = gateway.pid

        async def run_code(code: str, expect: str | None) -> Any:
            execution = await sandbox.run_code(code)
            if execution.error is not None:
                raise RuntimeError(f"{execution.error.name}: {execution.error.value}")
            if expect is not None and execution.text != expect:
                raise RuntimeError(f"expected {expect!r}, got {execution.text!r}")
            return execution

        self.methods["e2b"] = run_code

    async def setup(self, code: str) -> None:
        """Run ``code`` once in every kernel (untimed), e.g. to define what the timed code uses."""
        for name, method in self.methods.items():
            try:
                await method(code, None)
            except Exception as exc:
                raise RuntimeError(f"setup failed in {name}: {exc}") from exc
