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
        held device, by an idempotent Create (an agent that cannot say what it kept). Devices
        of retired pools count, and each port is compared with the spec it was attached with
        (a reload's new bridgePort is for new attachments)."""
        pinned = pools.pinned()
        for pool in pools.accounted():
            for device_id in held.ids(pool.resource_name):
                found = pool.get(device_id)
                if found is None or found.id in self._repairing:
                    continue
                unusable = pool.unusable_reason(device_id) and device_id not in pinned
                if self._leases.is_attaching(device_id) or unusable:
                    continue
                port = owned.get(found.spec.port_id)
                entry = self._as_attached(pools, found, port)
                problem = everything or self._problem(port, entry)
                if problem is None:
                    continue
                holder = held.holder(pool.resource_name, device_id)
                self._repairing.add(entry.id)
                task = asyncio.create_task(self._repair(pool, entry, port, problem, holder))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _as_attached(pools: PoolSet, entry: PoolDevice, port: PortState | None) -> PoolDevice:
        """The device with the spec its port was attached with. A port made before a
        bridgePort change keeps its spec, unless an Allocate has given it the new one."""
        spec = pools.attached_spec(entry)
        if spec == entry.spec:
            return entry
        if (
            port is None
            or not port.matches(entry.spec, compare_mac=False)
            or port.matches(spec, compare_mac=False)
        ):
            return PoolDevice(entry.device, spec)
        pools.forget_spec(entry.id)  # an Allocate attached it again, with the new spec
        return entry

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
