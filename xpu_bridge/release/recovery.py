"""Start-up recovery with no state file: adopt held ports, make the rest release candidates."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xpu_bridge.hostagent.ports import PortState
from xpu_bridge.kubelet.pod_resources import HeldDevices, PodResourcesUnavailable
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.device_health import mark_device_health
from xpu_bridge.release.gate import ReleaseGate
from xpu_bridge.release.held import HeldPortMap
from xpu_bridge.release.owned import OwnedPorts

log = logging.getLogger(__name__)


async def adopt_held_macs(
    pools: PoolSet, held: HeldDevices, owned: Mapping[str, PortState]
) -> None:
    """A held port's MAC wins over one derived because sysfs shows the device no netdev."""
    for pool in pools:
        for device_id in held.ids(pool.resource_name):
            entry = pool.get(device_id)
            port = owned.get(entry.spec.port_id) if entry else None
            if entry is not None and port is not None and entry.device.mac is None:
                await pool.adopt_mac(device_id, port.mac)


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
