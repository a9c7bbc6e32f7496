"""Allocate latency: sequential single-device Allocates from the kubelet's side of the plugin
socket, against the bare unary round trip (GetDevicePluginOptions) on the same socket, for
each agent behaviour; a fresh VF each Allocate, so each one creates a port on the agent."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.sim.bench.docs import AllocateCase, AllocateRun
from xpu_bridge.sim.bench.node import (
    BRIDGE,
    BenchNode,
    Shape,
    node_config,
    pool,
    remove,
    scratch_dir,
)
from xpu_bridge.sim.bench.processes import start_sim_agent
from xpu_bridge.sim.bench.settings import BenchSettings
from xpu_bridge.sim.bench.stats import as_ms, ratio, summary_ms

POOL = "opi.io/bench-vf"
WARMUP_RTTS = 50
WARMUP_ALLOCATES = 10
NEVER = 3600.0  # release.intervalSeconds etc.: nothing is released while we measure


@dataclass(frozen=True)
class AgentBehaviour:
    name: str
    description: str
    up_delay: float
    up_on_create: bool


BEHAVIOURS = (
    AgentBehaviour("up_on_create", "0 ms, UP on Create (Intel IPU style)", 0.0, True),
    AgentBehaviour("down_then_up", "0 ms, DOWN then UP (--up-delay 0)", 0.0, False),
    AgentBehaviour("delay_5ms", "5 ms programming delay (DOWN, UP 5 ms later)", 0.005, False),
)


async def run_allocate(settings: BenchSettings, say: Callable[[str], None]) -> AllocateCase:
    sysfs = scratch_dir("xb-bench-sys-")
    wanted = settings.rounds + WARMUP_ALLOCATES
    shape = Shape(pfs=2, vfs_per_pf=math.ceil(wanted / 2), sfs_per_pf=0)
    try:
        shape.build(sysfs)
        runs = []
        for behaviour in BEHAVIOURS:
            repeated = []
            for attempt in range(settings.repeats):
                run = await _measure(behaviour, sysfs, shape.vfs, settings.rounds)
                say(
                    f"allocate {behaviour.name} ({attempt + 1}/{settings.repeats}): p50 "
                    f"{run['allocate_ms']['p50']:.3f} ms (RTT {run['rtt_ms']['p50']:.3f} ms, "
                    f"{run['ratio_p50']:.2f}x), p99 {run['allocate_ms']['p99']:.3f} ms "
                    f"({run['ratio_p99']:.2f}x)"
                )
                repeated.append(run)
            runs.append(median_run(repeated))
    finally:
        remove(sysfs)
    return AllocateCase(
        devices=f"a fresh VF each Allocate ({shape.vfs} VFs on 2 PFs), nothing released",
        client="grpc.aio client in the bench process on the plugin socket (kubelet side); "
        "daemon `xpu-bridge run` and agent `xpu-bridge sim-agent` each in its own process",
        runs=runs,
    )


def median_run(runs: list[AllocateRun]) -> AllocateRun:
    """The run with the median p50 ratio, its ratios replaced by the medians of all runs'
    (the lower middle one of an even count: no ratio is made up by averaging)."""
    by_p50 = sorted(runs, key=lambda run: run["ratio_p50"])
    p50s = [run["ratio_p50"] for run in runs]
    p99s = [run["ratio_p99"] for run in runs]
    middle = (len(runs) - 1) // 2
    return AllocateRun(
        **by_p50[middle]
        | {
            "repeats": len(runs),
            "ratio_p50": sorted(p50s)[middle],
            "ratio_p99": sorted(p99s)[middle],
            "ratio_p50_runs": p50s,
            "ratio_p99_runs": p99s,
        }
    )


async def _measure(behaviour: AgentBehaviour, sysfs: Path, vfs: int, rounds: int) -> AllocateRun:
    root = scratch_dir("xb-bench-")
    agent = await start_sim_agent(root, BRIDGE, behaviour.up_delay, behaviour.up_on_create)
    raw = node_config(
        root, [pool("bench-vf", "vf")], release_interval=NEVER, grace=NEVER, holdoff=NEVER
    )
    node = await BenchNode.start(root, sysfs, raw, {POOL: vfs})
    try:
        await node.start_daemon()
        devices = [d.id for d in node.kubelet.devices(POOL)]
        async with grpc.aio.insecure_channel(node.plugin_target(POOL)) as channel:
            stub = dp_grpc.DevicePluginStub(channel)
            for _ in range(WARMUP_RTTS):
                await stub.GetDevicePluginOptions(dp.Empty())
            for device in devices[:WARMUP_ALLOCATES]:
                await _allocate(stub, device)
            trips, allocs = await _rounds(stub, devices[WARMUP_ALLOCATES:][:rounds])
    finally:
        await node.close()
        await agent.stop()
        remove(root)
    allocate_ms, rtt_ms = summary_ms(allocs), summary_ms(trips)
    return AllocateRun(
        name=behaviour.name,
        agent=behaviour.description,
        rounds=len(allocs),
        allocate_ms=allocate_ms,
        rtt_ms=rtt_ms,
        ratio_p50=ratio(allocate_ms["p50"], rtt_ms["p50"]),
        ratio_p99=ratio(allocate_ms["p99"], rtt_ms["p99"]),
        repeats=1,
        ratio_p50_runs=[ratio(allocate_ms["p50"], rtt_ms["p50"])],
        ratio_p99_runs=[ratio(allocate_ms["p99"], rtt_ms["p99"])],
        allocate_samples_ms=as_ms(allocs),
        rtt_samples_ms=as_ms(trips),
    )


async def _rounds(
    stub: dp_grpc.DevicePluginAsyncStub, devices: list[str]
) -> tuple[list[float], list[float]]:
    """One bare round trip, then one Allocate, per device: both see the same conditions."""
    trips, allocs = [], []
    for device in devices:
        started = time.perf_counter()
        await stub.GetDevicePluginOptions(dp.Empty())
        trips.append(time.perf_counter() - started)
        started = time.perf_counter()
        await _allocate(stub, device)
        allocs.append(time.perf_counter() - started)
    return trips, allocs


async def _allocate(stub: dp_grpc.DevicePluginAsyncStub, device: str) -> dp.AllocateResponse:
    request = dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=[device])]
    )
    response: dp.AllocateResponse = await stub.Allocate(request)
    if len(response.container_responses) != 1:
        raise RuntimeError(f"Allocate of {device} answered {response}")
    return response
