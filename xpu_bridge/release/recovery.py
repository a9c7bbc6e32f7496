"""Start-up recovery with no state file: adopt held ports, make the rest release candidates."""

from __future__ import annotations

import logging

from xpu_bridge.kubelet.pod_resources import PodResourcesUnavailable
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.device_health import mark_device_health
from xpu_bridge.release.gate import ReleaseGate
from xpu_bridge.release.held import HeldPortMap, adopt_held_macs
from xpu_bridge.release.owned import OwnedPorts

log = logging.getLogger(__name__)


async def recover(
    pools: PoolSet, owned_ports: OwnedPorts, held_map: HeldPortMap, gate: ReleaseGate, now: float
) -> None:
    """The kubelet and the xPU are the sources of truth: owned ports the kubelet still
    assigns are adopted (no new Create); the rest count as candidates once already."""
    gate.guards.start(now)
    owned = await owned_ports.refresh()
    if owned is None:
        return
    await mark_device_health(pools, owned, owned_ports.health.devices_unhealthy(now))
    try:
        held = await held_map.read()
    except PodResourcesUnavailable as error:
        log.warning("start-up recovery: %s; releasing nothing until it answers", error)
        return
    held_ports = held_map.port_ids(held).port_ids
    await adopt_held_macs(pools, held, owned)
    candidates = set(owned) - held_ports
    gate.seed(candidates)
    log.info(
        "start-up recovery: adopted %d port(s) held by containers, %d candidate(s) to release",
        len(set(owned) & held_ports),
        len(candidates),
    )
