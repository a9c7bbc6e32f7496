"""The JSON document `xpu-bridge bench --out FILE` writes: one TypedDict per case."""

from __future__ import annotations

from typing import Literal, TypedDict

Verdict = Literal["pass", "miss", "not measured"]


class Percentiles(TypedDict):
    """Milliseconds."""

    p50: float
    p99: float
    mean: float
    count: int


class AllocateRun(TypedDict):
    """One agent behaviour: Allocate against the bare RTT measured in the same run. With
    several runs, the percentiles and samples are the median run's (by p50 ratio), and each
    ratio is the median of the runs' own ratios (listed in *_runs)."""

    name: str
    agent: str
    rounds: int
    repeats: int
    allocate_ms: Percentiles
    rtt_ms: Percentiles
    ratio_p50: float
    ratio_p99: float
    ratio_p50_runs: list[float]
    ratio_p99_runs: list[float]
    allocate_samples_ms: list[float]
    rtt_samples_ms: list[float]


class AllocateCase(TypedDict):
    devices: str
    client: str
    runs: list[AllocateRun]


class HealthChange(TypedDict):
    """Times in ms; detect_to_visible_ms is None when the daemon's detection was not seen."""

    kind: str
    cause_to_visible_ms: float
    detect_to_visible_ms: float | None
    detection: str


class ScalePoint(TypedDict):
    devices: int
    vfs: int
    sfs: int
    pools: int
    startup_s: float
    startup_per_device_us: float
    encode_ms: float
    encode_per_device_us: float
    rss_mib: float
    health: list[HealthChange]


class ScaleCase(TypedDict):
    unhealthy_after_s: float
    release_interval_s: float
    points: list[ScalePoint]


class ChurnCase(TypedDict):
    duration_s: float
    agent_delay_ms: float
    pods_admitted: int
    pods_failed: int
    pods_per_s: float
    admit_ms: Percentiles
    release_lag_ms: Percentiles
    releases_measured: int
    reused_before_release: int
    not_released: int
    release_interval_s: float
    method: str


class HelpCase(TypedDict):
    command: str
    runs: int
    median_s: float
    samples_s: list[float]


class PrewarmCase(TypedDict):
    status: Literal["measured", "not measured"]
    reason: str
    up_delay_ms: float
    prewarm: int
    allocate_ms: Percentiles | None
    baseline_p99_ms: float | None
    ratio_p99: float | None


class Target(TypedDict):
    name: str
    description: str
    value: float | None
    compare: Literal["<=", ">="]
    limit: float
    unit: str
    verdict: Verdict
    note: str


class Machine(TypedDict):
    python: str
    cpus: int
    platform: str


class BenchDocument(TypedDict):
    version: int
    quick: bool
    started: str
    seconds: float
    machine: Machine
    allocate: AllocateCase
    scale: ScaleCase
    churn: ChurnCase
    cli_help: HelpCase
    prewarm: PrewarmCase
    targets: list[Target]
