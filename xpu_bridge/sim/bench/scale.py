"""Scale and growth: per device count, start-up to every pool registered with its full list,
ListAndWatch encode time, RSS at steady state, and how soon a health change (a port in ERROR,
the agent stopped past unhealthyAfterSeconds) reaches the kubelet."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.sim.bench.docs import HealthChange, ScaleCase, ScalePoint
from xpu_bridge.sim.bench.encode import encode_seconds
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
from xpu_bridge.sim.bench.processes import Subprocess
from xpu_bridge.sim.bench.settings import BenchSettings
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import HEALTHY, UNHEALTHY, SimKubelet

VF_POOL, SF_POOL = "opi.io/bench-vf", "opi.io/bench-sf"
NEVER = 3600.0
RSS_SAMPLES = 5
HEALTH_TIMEOUT = 30.0
# The daemon's WARNING when a pool's unhealthy set changes (release/device_health.py).
PORT_ERROR_LINE = r"device\(s\) unhealthy$"
AGENT_DOWN_LINE = r"device\(s\) unhealthy \(host agent"


async def run_scale(settings: BenchSettings, say: Callable[[str], None]) -> ScaleCase:
    points = []
    for size in settings.sizes:
        point = await _measure(Shape.mixed(size), settings)
        say(
            f"scale {point['devices']:>6} devices: start-up {point['startup_s']:.2f} s, "
            f"encode {point['encode_ms']:.1f} ms, RSS {point['rss_mib']:.1f} MiB, health "
            + ", ".join(f"{h['kind']} {_health_ms(h):.0f} ms" for h in point["health"])
        )
        points.append(point)
    return ScaleCase(
        unhealthy_after_s=settings.unhealthy_after,
        release_interval_s=settings.release_interval,
        points=points,
    )


def _health_ms(change: HealthChange) -> float:
    detected = change["detect_to_visible_ms"]
    return change["cause_to_visible_ms"] if detected is None else detected


async def _measure(shape: Shape, settings: BenchSettings) -> ScalePoint:
    root, sysfs = scratch_dir("xb-bench-"), scratch_dir("xb-bench-sys-")
    raw = node_config(
        root,
        [pool("bench-vf", "vf"), pool("bench-sf", "sf")],
        release_interval=settings.release_interval,
        grace=NEVER,
        holdoff=NEVER,
        unhealthy_after=settings.unhealthy_after,
    )
    agent = SimHostAgent([BRIDGE])
    node: BenchNode | None = None
    try:
        shape.build(sysfs)
        encode = await encode_seconds(sysfs, raw)
        await agent.start(f"unix://{root}/agent.sock")
        node = await BenchNode.start(root, sysfs, raw, {VF_POOL: shape.vfs, SF_POOL: shape.sfs})
        startup = await node.start_daemon()
        rss = await _steady_rss(node.daemon, settle=0.5 if settings.quick else 1.0)
        port_error = await _port_error(node, agent, settings)
        agent_down = await _agent_down(node, agent, settings)
    finally:
        if node is not None:
            await node.close()
        await agent.stop()
        remove(root)
        remove(sysfs)
    return ScalePoint(
        devices=shape.devices,
        vfs=shape.vfs,
        sfs=shape.sfs,
        pools=2,
        startup_s=round(startup, 4),
        startup_per_device_us=round(startup / shape.devices * 1e6, 3),
        encode_ms=round(encode * 1000, 4),
        encode_per_device_us=round(encode / shape.devices * 1e6, 4),
        rss_mib=round(rss, 2),
        health=[port_error, agent_down],
    )


async def _steady_rss(daemon: Subprocess, settle: float) -> float:
    """Median VmRSS of a few samples once the daemon has been idle for `settle` seconds."""
    await asyncio.sleep(settle)
    samples = []
    for _ in range(RSS_SAMPLES):
        samples.append(daemon.rss_mib())
        await asyncio.sleep(0.1)
    return statistics.median(samples)


async def _port_error(
    node: BenchNode, agent: SimHostAgent, settings: BenchSettings
) -> HealthChange:
    """Attach one VF, make its port report ERROR on the agent, wait for the kubelet to see it
    Unhealthy; then clear the error and wait for Healthy again."""
    device = node.kubelet.devices(VF_POOL)[0].id
    port_id = await _attach(node, device)
    cause = time.time()
    agent.set_port_error(port_id)
    timeout = settings.release_interval * 3 + HEALTH_TIMEOUT
    visible = await _wait_health(node.kubelet, VF_POOL, {device}, UNHEALTHY, timeout)
    agent.clear_port_error(port_id)
    await _wait_health(node.kubelet, VF_POOL, {device}, HEALTHY, timeout)
    return _change("port ERROR", node.daemon, PORT_ERROR_LINE, cause, {VF_POOL: visible})


async def _agent_down(
    node: BenchNode, agent: SimHostAgent, settings: BenchSettings
) -> HealthChange:
    """Stop the agent; wait until the kubelet sees every device of every pool Unhealthy."""
    cause = time.time()
    await agent.stop(grace=0)
    timeout = settings.unhealthy_after + settings.release_interval * 3 + HEALTH_TIMEOUT

    async def seen(resource: str) -> float:
        ids = {d.id for d in node.kubelet.devices(resource)}
        return await _wait_health(node.kubelet, resource, ids, UNHEALTHY, timeout)

    resources = list(node.capacity)
    visible = await asyncio.gather(*(seen(resource) for resource in resources))
    return _change(
        "agent down",
        node.daemon,
        AGENT_DOWN_LINE,
        cause,
        dict(zip(resources, visible, strict=True)),
    )


def _change(
    kind: str, daemon: Subprocess, line: str, cause: float, visible: dict[str, float]
) -> HealthChange:
    """From the cause, and from the daemon's log line saying it marked a pool's devices (each
    pool's line against that pool's visibility; the worst pool counts)."""
    events = daemon.log_events(line, since=cause)
    lags = []
    for resource, seen in visible.items():
        detected = next((at for at, msg in events if f"pool {resource}:" in msg), None)
        if detected is not None:
            lags.append(seen - detected)
    detect_ms = round(max(lags) * 1000, 3) if len(lags) == len(visible) else None
    return HealthChange(
        kind=kind,
        cause_to_visible_ms=round((max(visible.values()) - cause) * 1000, 3),
        detect_to_visible_ms=detect_ms,
        detection="the daemon's WARNING line marking the pool (JSON log, ms resolution)"
        if detect_ms is not None
        else "not observable in the daemon's log; measured from the cause",
    )


async def _attach(node: BenchNode, device: str) -> str:
    """Allocate `device` as the kubelet would; returns its port ID."""
    async with grpc.aio.insecure_channel(node.plugin_target(VF_POOL)) as channel:
        stub = dp_grpc.DevicePluginStub(channel)
        request = dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=[device])]
        )
        response = await stub.Allocate(request)
    return port_id_of(response.container_responses[0], device)


async def _wait_health(
    kubelet: SimKubelet, resource: str, ids: set[str], health: str, timeout: float
) -> float:
    """Wait until the kubelet holds every device of `ids` in `health`; returns time.time()
    when it saw that. Reads the kubelet's own healthyDevices set as each ListAndWatch message
    lands, instead of `wait_for_devices`, which builds a sorted DeviceView per device on every
    change (15 ms at 12,288 devices: the bench's cost, not the daemon's)."""
    state, changes = kubelet._devices, kubelet._changes

    def check() -> float | None:
        healthy = state.healthy(resource) or set()
        done = ids <= healthy if health == HEALTHY else not (ids & healthy)
        return time.time() if done else None

    return await changes.wait(check, timeout, f"{health} devices of {resource}")
