"""Prometheus metrics of one gateway process, in a registry of its own (several apps may share a process).

    metrics = GatewayMetrics()
    metrics.execution_finished("completed", 0.012)
    text = metrics.render()        # what GET /metrics serves

Gauges that mirror live state (sandboxes, pool) are read when scraped, from the callables
given to ``watch``, so nothing has to keep them in step. What every execution and request
records goes through ``execution_finished`` and ``request_served``, which keep each labelled
child once found (``labels()`` costs a lock and a sorted copy of the labels every call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.executions = Counter(
            "code_gateway_executions", "Executions finished, by final status", ["status"], registry=self.registry
        )
        self.execution_seconds = Histogram(
            "code_gateway_execution_seconds", "Time from an execution's start to its end",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.sandbox_starts = Histogram(
            "code_gateway_sandbox_start_seconds", "Time to a running sandbox, by where it came from",
            ["source"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.sandbox_exits = Counter(
            "code_gateway_sandbox_exits", "Kernels that went away on their own, by reason", ["reason"],
            registry=self.registry,
        )
        self.kernel_messages_dropped = Counter(
            "code_gateway_kernel_messages_dropped",
            "Kernel messages dropped unread: malformed, not signed with the sandbox's key, nested too deep "
            "to be read (too_deep; an output so is a note in its execution), output arriving faster than "
            "the gateway handles it (outran_gateway; its execution says so in a note), or larger than a "
            "kernel may send (oversized: cut by the relay to its kernel; noted likewise)", ["reason"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "code_gateway_http_request_seconds", "HTTP requests served, by method and status",
            ["method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.slow_clients = Counter(
            "code_gateway_slow_clients", "Clients cut off for falling too far behind what they were sent, by kind",
            ["kind"], registry=self.registry,
        )
        self._live = Gauge("code_gateway_sandboxes", "Live sandboxes, by state", ["state"], registry=self.registry)
        self._pool = Gauge("code_gateway_pool_ready", "Warm sandboxes ready to be claimed", registry=self.registry)
        # Totals over all sandboxes, sampled (SandboxManager.usage_interval); per sandbox: GET …/metrics.
        self._usage_cpu = Gauge("code_gateway_sandbox_cpu_seconds",
                                "CPU time used by the live sandboxes, summed", registry=self.registry)
        self._usage_memory = Gauge("code_gateway_sandbox_memory_bytes",
                                   "Memory used by the live sandboxes now (working sets), summed", registry=self.registry)
        self._usage_pids = Gauge("code_gateway_sandbox_pids", "Processes and threads in the live sandboxes",
                                 registry=self.registry)
        self.webhook_deliveries = Counter(
            "code_gateway_webhook_deliveries", "Attempts to deliver an event to a webhook, by result (delivered, "
            "failed: retried)", ["result"], registry=self.registry,
        )
        self._saved_bytes = Gauge("code_gateway_paused_bytes",
                                  "Gateway disk taken by the saved state of paused sandboxes", registry=self.registry)
        self._finished: dict[str, Any] = {}
        self._served: dict[tuple[str, int], Any] = {}

    def execution_finished(self, status: str, seconds: float | None) -> None:
        """Count an execution that ended with ``status``, and its duration (None: it never started)."""
        counter = self._finished.get(status)
        if counter is None:
            counter = self._finished[status] = self.executions.labels(status=status)
        counter.inc()
        if seconds is not None:
            self.execution_seconds.observe(seconds)

    def request_served(self, method: str, status: int, seconds: float) -> None:
        """Record an HTTP request answered with ``status`` after ``seconds``."""
        histogram = self._served.get((method, status))
        if histogram is None:
            histogram = self._served[(method, status)] = self.requests.labels(method=method, status=str(status))
        histogram.observe(seconds)

    def watch(self, *, live: Callable[[], int], busy: Callable[[], int], pool_ready: Callable[[], int]) -> None:
        """Read these at every scrape."""
        self._live.labels(state="live").set_function(live)
        self._live.labels(state="busy").set_function(busy)
        self._pool.set_function(pool_ready)

    def watch_paused(self, paused: Callable[[], int]) -> None:
        self._live.labels(state="paused").set_function(paused)

    def record_usage(self, totals: Any, *, saved_bytes: int) -> None:
        """The latest usage totals (a ``Usage`` summed over sandboxes)."""
        self._usage_cpu.set(totals.cpu_seconds or 0)
        self._usage_memory.set(totals.memory_bytes or 0)
        self._usage_pids.set(totals.pids or 0)
        self._saved_bytes.set(saved_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
