"""Churn: the simulated kubelet admits and deletes pods as fast as it can for a while, the agent
taking 1 ms per port; pods per second and release lag (pod deleted to its port deleted on the
agent, from the agent's own record of deletions)."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from xpu_bridge.sim.bench.docs import ChurnCase
from xpu_bridge.sim.bench.node import (
    BRIDGE,
    BenchNode,
    Shape,
    node_config,
    pool,
    port_id_of,
    remove,
    scratch_dir,
)
from xpu_bridge.sim.bench.settings import BenchSettings
from xpu_bridge.sim.bench.stats import summary_ms
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import AdmissionError, Container

POOLS = ("opi.io/churn-a", "opi.io/churn-b")
VFS_PER_POOL = 64
LIVE_PODS = 16
RELEASE_INTERVAL = 0.2
METHOD = (
    "pods of 1 VF each, admitted one at a time by the simulated kubelet (GetPreferredAllocation, "
    f"Allocate), the oldest deleted once {LIVE_PODS} live; every phase the pods switch between "
    "two pools and the last phase's pods are all deleted. The kubelet reuses a freed VF at "
    "once (its port is still there, so no release is due): release lag is measured on each "
    "deletion whose port the agent deleted before the VF was handed out again, which is "
    "mostly the pods deleted at a phase switch and at the end"
)


@dataclass
class Timeline:
    """What happened to each port: pods admitted and deleted (time.monotonic())."""

    admits: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    deletes: list[tuple[float, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Lags:
    lags: list[float]
    reused: int
    pending: int


def lags(timeline: Timeline, agent_deletions: list[tuple[float, str]]) -> Lags:
    """Per pod deletion: its port's first agent deletion after it, unless the VF was admitted
    again before that (reused), or none came at all (pending)."""
    removed: dict[str, list[float]] = defaultdict(list)
    for at, port in agent_deletions:
        removed[port].append(at)
    found, reused, pending = [], 0, 0
    for deleted, port in timeline.deletes:
        admits = timeline.admits[port]
        nxt = bisect.bisect_right(admits, deleted)
        readmitted = admits[nxt] if nxt < len(admits) else None
        gone = sorted(at for at in removed[port] if at >= deleted)
        if gone and (readmitted is None or gone[0] < readmitted):
            found.append(gone[0] - deleted)
        elif readmitted is not None:
            reused += 1
        else:
            pending += 1
    return Lags(found, reused, pending)


async def run_churn(settings: BenchSettings, say: Callable[[str], None]) -> ChurnCase:
    root, sysfs = scratch_dir("xb-bench-"), scratch_dir("xb-bench-sys-")
    raw = node_config(
        root,
        [pool("churn-a", "vf", ["ens1f0"]), pool("churn-b", "vf", ["ens1f1"])],
        release_interval=RELEASE_INTERVAL,
        grace=0,
        holdoff=0,
    )
    delay = settings.churn_delay
    agent = SimHostAgent([BRIDGE], up_delay=delay, delete_delay=delay)
    node: BenchNode | None = None
    try:
        Shape(pfs=2, vfs_per_pf=VFS_PER_POOL, sfs_per_pf=0).build(sysfs)
        await agent.start(f"unix://{root}/agent.sock")
        node = await BenchNode.start(root, sysfs, raw, dict.fromkeys(POOLS, VFS_PER_POOL))
        await node.start_daemon()
        case = await _churn(node, agent, settings)
    finally:
        if node is not None:
            await node.close()
        await agent.stop()
        remove(root)
        remove(sysfs)
    say(
        f"churn: {case['pods_per_s']:.0f} pods/s over {case['duration_s']:.0f} s, release lag "
        f"p99 {case['release_lag_ms']['p99']:.0f} ms ({case['releases_measured']} releases)"
    )
    return case


async def _churn(node: BenchNode, agent: SimHostAgent, settings: BenchSettings) -> ChurnCase:
    kubelet, timeline = node.kubelet, Timeline()
    live: deque[tuple[str, str]] = deque()  # (pod, port)
    admit_times: list[float] = []
    failed = 0
    phase_seconds = 1.0 if settings.quick else 2.0

    def delete(pod: str, port: str) -> None:
        kubelet.delete_pod(pod)
        timeline.deletes.append((time.monotonic(), port))

    started = time.monotonic()
    phase_end, phase, number = started + phase_seconds, 0, 0
    while (now := time.monotonic()) < started + settings.churn_seconds:
        if now >= phase_end:
            while live:
                delete(*live.popleft())
            phase, phase_end = phase + 1, now + phase_seconds
        number += 1
        name, resource = f"churn-{number}", POOLS[phase % len(POOLS)]
        before = time.perf_counter()
        try:
            assigned = await kubelet.admit_pod(name, containers=[Container("app", {resource: 1})])
        except AdmissionError:
            failed += 1
            continue
        admit_times.append(time.perf_counter() - before)
        item = assigned[0]
        port = port_id_of(item.response, item.device_ids[0])
        timeline.admits[port].append(time.monotonic())
        live.append((name, port))
        if len(live) > LIVE_PODS:
            delete(*live.popleft())
    elapsed = time.monotonic() - started
    while live:
        delete(*live.popleft())
    result = await _drain(agent, timeline)
    return ChurnCase(
        duration_s=round(elapsed, 3),
        agent_delay_ms=settings.churn_delay * 1000,
        pods_admitted=len(admit_times),
        pods_failed=failed,
        pods_per_s=round(len(admit_times) / elapsed, 2),
        admit_ms=summary_ms(admit_times or [0.0]),
        release_lag_ms=summary_ms(result.lags or [0.0]),
        releases_measured=len(result.lags),
        reused_before_release=result.reused,
        not_released=result.pending,
        release_interval_s=RELEASE_INTERVAL,
        method=METHOD,
    )


async def _drain(agent: SimHostAgent, timeline: Timeline, timeout: float = 10.0) -> Lags:
    """Wait until every deleted pod's port is either released or was reused."""
    deadline = time.monotonic() + timeout
    while True:
        result = lags(timeline, agent.deletions)
        if not result.pending or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)
