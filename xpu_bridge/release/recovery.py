"""Start-up recovery with no state file: adopt held ports, make the rest release candidates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from xpu_bridge.hostagent.ports import PortError
from xpu_bridge.kubelet.pod_resources import HeldDevices, PodResourcesUnavailable
from xpu_bridge.node.network_functions import DEVICES_PER_FUNCTION, FunctionPair, NetworkFunctions
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.device_health import mark_device_health
from xpu_bridge.release.gate import ReleaseGate
from xpu_bridge.release.held import HeldPortMap, adopt_held_macs
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.prewarm import PrewarmKeeper
from xpu_bridge.release.sweep import StartupSweep

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryParts:
    pools: PoolSet
    owned: OwnedPorts
    held: HeldPortMap
    gate: ReleaseGate
    sweep: StartupSweep
    functions: NetworkFunctions
    kubelet_age: Callable[[], float | None]
    """Seconds since the kubelet made its socket, None when there is none."""
    prewarm: PrewarmKeeper


def kubelet_is_young(age: float | None, holdoff: float) -> str | None:
    """Why the kubelet may have restarted with us, or None when it has been up long enough."""
    if age is None:
        return "no kubelet socket is there yet"
    if age < holdoff:
        return f"the kubelet socket is {age:.0f}s old"
    return None


def _say_holdoff(why: str | None, holdoff: float) -> None:
    if why is None:
        log.info("start-up: the kubelet has been up for a while: no start-up release hold-off")
    elif holdoff > 0:
        log.info("start-up: %s: no release for %gs (release.holdoffSeconds)", why, holdoff)


async def recover(parts: RecoveryParts, now: float) -> None:
    """The kubelet and the xPU are the sources of truth: owned ports the kubelet still
    assigns are adopted (no new Create); the rest count as candidates once already. An agent
    that cannot list gets an idempotent Create for each held device instead, and every other
    device of our pools becomes part of the start-up sweep."""
    pools, owned_ports, held_map, gate = parts.pools, parts.owned, parts.held, parts.gate
    holdoff = gate.guards.holdoff
    why = kubelet_is_young(parts.kubelet_age(), holdoff)
    gate.guards.start(now, why)
    owned = await owned_ports.refresh()
    if owned is None:
        _say_holdoff(why, holdoff)
        return
    await mark_device_health(pools, owned, owned_ports.health.unhealthy_reason(now))
    try:
        held = await held_map.read()
    except PodResourcesUnavailable as error:
        log.warning("start-up recovery: %s; releasing nothing until it answers", error)
        _say_holdoff(why, holdoff)
        return
    adopted = parts.prewarm.adopt(owned, held.all_ids())
    unexplained = set(owned) - adopted  # prewarmed ports exist while no pod runs
    if why is None and unexplained and not held.all_ids():
        why = f"PodResources lists no container of ours while {len(unexplained)} of our ports exist"
        gate.guards.start(now, why)
    _say_holdoff(why, holdoff)
    held_ports = held_map.port_ids(held).port_ids
    await adopt_held_macs(pools, held, owned)
    adopt_function_pairs(pools, held, parts.functions)
    if not owned_ports.agent.capabilities.lists_ports:
        await _ensure_held(pools, held, owned_ports)
        owned = await owned_ports.refresh() or {}
        parts.sweep.seed(pools, set(owned))
        log.info(
            "start-up recovery: %d held port(s) ensured by name, %d device(s) to sweep "
            "(the agent cannot list its ports)",
            len(owned),
            len(parts.sweep.pending),
        )
        return
    candidates = set(owned) - held_ports - adopted
    gate.seed(candidates)
    log.info(
        "start-up recovery: adopted %d port(s) held by containers, %d candidate(s) to release",
        len(set(owned) & held_ports),
        len(candidates),
    )


def adopt_function_pairs(pools: PoolSet, held: HeldDevices, functions: NetworkFunctions) -> None:
    """A container of a network-function pool holding both its devices is a chained pair."""
    for pool in pools:
        if not pool.resource.network_function:
            continue
        for holder, ids in held.by_holder(pool.resource_name).items():
            entries = [entry for device_id in ids if (entry := pool.get(device_id))]
            if len(entries) == DEVICES_PER_FUNCTION:
                pair = FunctionPair.of(*entries)
                if functions.pair_of(pair.input_id) != pair:
                    functions.adopt(pair)
                    log.info("network function %s of %s adopted", pair, holder)


async def _ensure_held(pools: PoolSet, held: HeldDevices, owned: OwnedPorts) -> None:
    for pool in pools:
        for device_id in sorted(held.ids(pool.resource_name)):
            entry = pool.get(device_id)
            if entry is None or pool.unusable_reason(device_id):
                continue
            try:
                await owned.agent.ensure_port(entry.spec)
            except PortError as error:
                log.error("start-up recovery: held device %s: %s", device_id, error)
