"""Repair: held devices whose port is missing, dying, DOWN too long or changed get it back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from xpu_bridge.hostagent.ports import HostAgent, OperStatus, PortError, PortSpec, PortState
from xpu_bridge.kubelet.pod_resources import HeldDevices, Holder
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import DevicePool, PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.stats import ReleaseStats

log = logging.getLogger(__name__)


def port_problem(
    port: PortState | None, spec: PortSpec, down_for: float, attach_timeout: float
) -> str | None:
    """Why a held device's port needs re-creating, or None. A DOWN port gets the attach
    timeout to come UP (agents re-program ports after a component restart) unless a
    component reports ERROR. The MAC is not compared: sysfs can stop showing it (the netdev
    moved into the pod) while the pod still uses the port."""
    if port is None:
        return "missing on the xPU"
    if port.oper is OperStatus.TO_BE_DELETED:
        return "being deleted"
    if port.oper is OperStatus.DOWN:
        if port.component_errors:
            return f"DOWN ({'; '.join(port.component_errors)})"
        if down_for > attach_timeout:
            return f"DOWN for {down_for:.0f}s"
        return None
    if not port.matches(spec, compare_mac=False):
        return "configured differently"
    return None


class PortRepair:
    """Repairs run in the background, one per device at a time, so a slow one never delays
    a pass; a DOWN port is deleted first (under the release lock) and created again."""

    def __init__(
        self,
        agent: HostAgent,
        owned: OwnedPorts,
        leases: DeviceLeases,
        stats: ReleaseStats,
        clock: Callable[[], float],
    ) -> None:
        self._agent = agent
        self._owned = owned
        self._leases = leases
        self._stats = stats
        self._clock = clock
        self._repairing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        held: HeldDevices,
        owned: Mapping[str, PortState],
        pools: PoolSet,
        everything: str | None = None,
    ) -> None:
        """Repair every held device whose port has a problem; with `everything` (why), every
        held device, by an idempotent Create (an agent that cannot say what it kept)."""
        for pool in pools:
            for device_id in held.ids(pool.resource_name):
                entry = pool.get(device_id)
                if entry is None or entry.id in self._repairing:
                    continue
                if self._leases.is_attaching(device_id) or pool.unusable_reason(device_id):
                    continue
                port = owned.get(entry.spec.port_id)
                problem = everything or self._problem(port, entry)
                if problem is None:
                    continue
                holder = held.holder(pool.resource_name, device_id)
                self._repairing.add(entry.id)
                task = asyncio.create_task(self._repair(pool, entry, port, problem, holder))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _problem(self, port: PortState | None, entry: PoolDevice) -> str | None:
        if port is None and not self._agent.capabilities.lists_ports:
            return "not known to exist (the agent cannot list its ports)"
        down_for = self._owned.down_for(entry.spec.port_id, self._clock())
        return port_problem(port, entry.spec, down_for, self._agent.attach_timeout)

    async def _repair(
        self,
        pool: DevicePool,
        entry: PoolDevice,
        port: PortState | None,
        problem: str,
        holder: Holder | None,
    ) -> None:
        try:
            if port is not None and port.oper is OperStatus.DOWN:
                async with self._leases.release_lock(entry.id):
                    if self._leases.recently_attached(entry.id):
                        return
                    now = await self._agent.get_port(port.name)
                    if now is not None and now.oper is OperStatus.DOWN:
                        await self._agent.delete_port(port.name)
            attachment = await self._agent.ensure_port(entry.spec)
        except PortError as error:
            log.error("device %s held by %s: repair failed: %s", entry.id, holder, error)
            return
        finally:
            self._repairing.discard(entry.id)
        self._stats.repairs[pool.resource_name] += 1
        self._owned.put(attachment.port)
        log.warning(
            "repaired port %s of device %s (%s) held by %s: it was %s",
            attachment.port.name,
            entry.id,
            pool.resource_name,
            holder,
            problem,
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
