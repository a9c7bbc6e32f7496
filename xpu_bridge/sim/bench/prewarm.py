"""The prewarm case's slot: with `bridgePort.prewarm: N` (ports attached and UP ahead of
demand), an agent taking 500 ms to bring a port UP and prewarm >= demand, Allocate p99 against
the 0 ms case. Measured only when the config schema has the key; else "not measured"."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.sim import polling
from xpu_bridge.sim.bench.docs import AllocateCase, PrewarmCase
from xpu_bridge.sim.bench.node import (
    BRIDGE,
    BenchNode,
    Shape,
    node_config,
    pool,
    remove,
    scratch_dir,
)
from xpu_bridge.sim.bench.settings import BenchSettings
from xpu_bridge.sim.bench.stats import ratio, summary_ms
from xpu_bridge.sim.host_agent import SimHostAgent

POOL = "opi.io/prewarm"
PREWARMED = r"^prewarmed port "
"""The daemon's log line for each port it counts as prewarmed (release/prewarm.py)."""
UP_DELAY = 0.5
BASELINE = "down_then_up"
NEVER = 3600.0


def prewarm_pool(count: int) -> dict[str, object]:
    entry = pool("prewarm", "vf")
    entry["bridgePort"] = {**entry["bridgePort"], "prewarm": count}
    return entry


def prewarm_available() -> bool:
    """Whether this daemon's config schema takes bridgePort.prewarm."""
    from xpu_bridge.config import ConfigError, parse_config

    try:
        parse_config({"resourceList": [prewarm_pool(1)]})
    except ConfigError:
        return False
    return True


def not_measured(reason: str, count: int) -> PrewarmCase:
    return PrewarmCase(
        status="not measured",
        reason=reason,
        up_delay_ms=UP_DELAY * 1000,
        prewarm=count,
        allocate_ms=None,
        baseline_p99_ms=None,
        ratio_p99=None,
    )


async def run_prewarm(
    settings: BenchSettings, allocate: AllocateCase, say: Callable[[str], None]
) -> PrewarmCase:
    count = 4 if settings.quick else 16
    if not prewarm_available():
        say("prewarm: not measured: prewarm not available (no bridgePort.prewarm in the config)")
        return not_measured("prewarm not available: the config has no bridgePort.prewarm", count)
    baseline = next(run for run in allocate["runs"] if run["name"] == BASELINE)
    root, sysfs = scratch_dir("xb-bench-"), scratch_dir("xb-bench-sys-")
    agent = SimHostAgent([BRIDGE], up_delay=UP_DELAY, delete_delay=0.0)
    node: BenchNode | None = None
    try:
        shape = Shape(pfs=2, vfs_per_pf=count * 2, sfs_per_pf=0)
        shape.build(sysfs)
        await agent.start(f"unix://{root}/agent.sock")
        raw = node_config(
            root, [prewarm_pool(count)], release_interval=1.0, grace=NEVER, holdoff=NEVER
        )
        node = await BenchNode.start(root, sysfs, raw, {POOL: shape.vfs})
        await node.start_daemon()
        await agent.wait_until(lambda: _up(agent) >= count, timeout=count * UP_DELAY + 30)
        # UP on the agent is not yet prewarmed: the daemon counts a port once its own poll
        # saw it UP (its log says so). Allocates before that wait for the keeper's Create.
        daemon = node.daemon
        await polling.wait_until(
            lambda: len(daemon.log_events(PREWARMED)) >= count, timeout=30, interval=0.05
        )
        times = await _allocate_preferred(node, count)
    finally:
        if node is not None:
            await node.close()
        await agent.stop()
        remove(root)
        remove(sysfs)
    summary = summary_ms(times)
    say(f"prewarm: Allocate p99 {summary['p99']:.2f} ms with a {UP_DELAY * 1000:.0f} ms agent")
    return PrewarmCase(
        status="measured",
        reason=f"prewarm {count} >= demand {count}; agent UP after {UP_DELAY * 1000:.0f} ms",
        up_delay_ms=UP_DELAY * 1000,
        prewarm=count,
        allocate_ms=summary,
        baseline_p99_ms=baseline["allocate_ms"]["p99"],
        ratio_p99=ratio(summary["p99"], baseline["allocate_ms"]["p99"]),
    )


def _up(agent: SimHostAgent) -> int:
    return sum(p.status.oper_status == pb.BP_OPER_STATUS_UP for p in agent.ports.values())


async def _allocate_preferred(node: BenchNode, demand: int) -> list[float]:
    """`demand` single-device Allocates of the device the plugin prefers, as the kubelet asks."""
    free = [d.id for d in node.kubelet.devices(POOL)]
    times = []
    async with grpc.aio.insecure_channel(node.plugin_target(POOL)) as channel:
        stub = dp_grpc.DevicePluginStub(channel)
        for _ in range(demand):
            preferred = await stub.GetPreferredAllocation(
                dp.PreferredAllocationRequest(
                    container_requests=[
                        dp.ContainerPreferredAllocationRequest(
                            available_deviceIDs=free, allocation_size=1
                        )
                    ]
                )
            )
            device = preferred.container_responses[0].deviceIDs[0]
            free.remove(device)
            request = dp.AllocateRequest(
                container_requests=[dp.ContainerAllocateRequest(devices_ids=[device])]
            )
            started = time.perf_counter()
            await stub.Allocate(request)
            times.append(time.perf_counter() - started)
    return times
