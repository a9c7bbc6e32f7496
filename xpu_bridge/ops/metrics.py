"""Prometheus metrics of one daemon: counters fed by the hot paths, gauges read at scrape time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xpu_bridge.common.version import package_version

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
RELOAD_APPLIED = "applied"
RELOAD_UNCHANGED = "unchanged"
RELOAD_INVALID = "invalid"
RELOAD_RESTART_REQUIRED = "restart_required"
"""Only fields that a restart applies changed: nothing was applied."""
RELOAD_FAILED = "failed"
RELOAD_RESULTS = (
    RELOAD_APPLIED, RELOAD_UNCHANGED, RELOAD_INVALID, RELOAD_RESTART_REQUIRED, RELOAD_FAILED,
)  # fmt: skip
ALLOCATE_RESULTS = (
    "success", "failed", "unreachable", "unknown_device", "invalid_request", "unusable_device",
)  # fmt: skip
"""The `result` label values of xpu_bridge_allocations_total (kubelet/plugin_server.py)."""


@dataclass(frozen=True, slots=True)
class DeviceCounts:
    resource: str
    free: int
    allocated: int
    unhealthy: int


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the scrape-time collector needs; the daemon builds it on demand."""

    devices: list[DeviceCounts]
    host_agent_up: bool
    releases: dict[tuple[str, str], int]
    held_back: dict[str, int]
    repairs: dict[str, int]
    failing_creates: int = 0
    ready: bool = False
    """What /readyz answers: every pool registered and the agent usable."""
    prewarmed: dict[str, int] = field(default_factory=dict)
    """resource -> prewarmed ports now (every served pool, 0 included)."""
    prewarm_taken: dict[str, int] = field(default_factory=dict)
    """resource -> devices Allocate found prewarmed."""


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        devices = GaugeMetricFamily(
            "xpu_bridge_devices",
            "Devices per resource by state (free, allocated, unhealthy)",
            labels=["resource", "state"],
        )
        for counts in state.devices:
            devices.add_metric([counts.resource, "free"], counts.free)
            devices.add_metric([counts.resource, "allocated"], counts.allocated)
            devices.add_metric([counts.resource, "unhealthy"], counts.unhealthy)
        yield devices
        yield GaugeMetricFamily(
            "xpu_bridge_host_agent_up",
            "1 when the OPI host agent answered the last reconcile pass",
            value=1 if state.host_agent_up else 0,
        )
        yield GaugeMetricFamily(
            "xpu_bridge_ready",
            "1 while /readyz answers ready (every pool registered, the host agent usable)",
            value=1 if state.ready else 0,
        )
        yield GaugeMetricFamily(
            "xpu_bridge_host_agent_failing_creates",
            "CreateBridgePort calls that failed in a row (0 after one succeeds)",
            value=state.failing_creates,
        )
        releases = CounterMetricFamily(
            "xpu_bridge_releases",
            "Bridge ports released, by resource and reason",
            labels=["resource", "reason"],
        )
        for (resource, reason), count in sorted(state.releases.items()):
            releases.add_metric([resource, reason], count)
        yield releases
        held_back = CounterMetricFamily(
            "xpu_bridge_release_held_back",
            "Reconcile passes whose releases a guard held back, by guard",
            labels=["guard"],
        )
        for guard in ("pod_resources_unreadable", "startup", "kubelet_restart", "mass_release"):
            held_back.add_metric([guard], state.held_back.get(guard, 0))
        yield held_back
        repairs = CounterMetricFamily(
            "xpu_bridge_repairs",
            "Held devices whose bridge port was re-created, by resource",
            labels=["resource"],
        )
        for resource, count in sorted(state.repairs.items()):
            repairs.add_metric([resource], count)
        yield repairs
        prewarmed = GaugeMetricFamily(
            "xpu_bridge_prewarmed_ports",
            "Free devices whose bridge port is attached and UP ahead of demand, by resource",
            labels=["resource"],
        )
        for resource, count in sorted(state.prewarmed.items()):
            prewarmed.add_metric([resource], count)
        yield prewarmed
        taken = CounterMetricFamily(
            "xpu_bridge_allocations_prewarmed",
            "Devices an Allocate handed out with their prewarmed port (no Create), by resource",
            labels=["resource"],
        )
        for resource, count in sorted(state.prewarm_taken.items()):
            taken.add_metric([resource], count)
        yield taken


class _LoopCollector(Collector):
    """Tasks of the event loop that answers the scrape (the daemon's only loop): a leak of
    tasks shows as a count that only grows, which RSS alone would show much later."""

    NAME = "xpu_bridge_event_loop_tasks"
    HELP = "asyncio tasks alive in the daemon's event loop, the scrape's own included"

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP)

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # read outside a running loop (a test reading the registry)
            return
        yield GaugeMetricFamily(self.NAME, self.HELP, value=tasks)


class Metrics:
    """One registry per daemon, so several daemons (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.allocations = Counter(
            "xpu_bridge_allocations",
            "Allocate calls by resource and result",
            ["resource", "result"],
            registry=self.registry,
        )
        self.allocate_duration = Histogram(
            "xpu_bridge_allocate_duration_seconds",
            "Time to answer one Allocate, ports UP included",
            ["resource"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.opi_requests = Counter(
            "xpu_bridge_opi_requests",
            "RPCs to the OPI host agent by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.opi_duration = Histogram(
            "xpu_bridge_opi_request_duration_seconds",
            "Duration of one RPC to the OPI host agent",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registrations = Counter(
            "xpu_bridge_kubelet_registrations",
            "Successful registrations with the kubelet, by resource",
            ["resource"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "xpu_bridge_config_reloads",
            "Config reloads (SIGHUP or a changed file) by result: applied, unchanged, invalid, "
            "restart_required (only fields a restart applies changed), failed",
            ["result"],
            registry=self.registry,
        )
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.config_loaded_at = Gauge(
            "xpu_bridge_config_last_reload_success_timestamp_seconds",
            "When the running config was read: at start or by the last reload that applied",
            registry=self.registry,
        )
        self.config_file = Gauge(
            "xpu_bridge_config_info",
            "1, labelled with the SHA-256 of the config file as the running config was read",
            ["sha256"],
            registry=self.registry,
        )
        Gauge(
            "xpu_bridge_build_info", "Build information", ["version"], registry=self.registry
        ).labels(package_version()).set(1)
        self.registry.register(_LoopCollector())

    def observe_opi(self, method: str, code: str, seconds: float) -> None:
        self.opi_requests.labels(method, code).inc()
        self.opi_duration.labels(method).observe(seconds)

    def observe_allocate(self, resource: str, result: str, seconds: float) -> None:
        self.allocations.labels(resource, result).inc()
        self.allocate_duration.labels(resource).observe(seconds)

    def registered(self, resource: str) -> None:
        """Also starts the pool's Allocate series at 0: a series born at 1 hides its first
        increment from rate() and increase(), so the first Allocate (or the first failures,
        XpuBridgeAllocateFailing) would not show."""
        self.registrations.labels(resource).inc()
        for result in ALLOCATE_RESULTS:
            self.allocations.labels(resource, result)
        self.allocate_duration.labels(resource)

    def config_reloaded(self, result: str) -> None:
        self.config_reloads.labels(result).inc()

    def config_loaded(self, sha256: str) -> None:
        self.config_loaded_at.set_to_current_time()
        self.config_file.clear()
        self.config_file.labels(sha256).set(1)

    def watch_state(self, snapshot: Callable[[], StateSnapshot]) -> None:
        self.registry.register(_StateCollector(snapshot))
