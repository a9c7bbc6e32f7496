"""Releasing a port: the Delete and everything that goes with it (device-info, lease, counts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from xpu_bridge.hostagent.ports import HostAgent, PortError, PortState
from xpu_bridge.node.devinfo import DevInfoError, DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.network_functions import NetworkFunctions
from xpu_bridge.node.pool_set import PoolMember
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.stats import ReleaseStats

log = logging.getLogger(__name__)

REASONS = {
    "unheld": "no container holds it",
    "hook": "requested by the release hook",
    "sweep": "start-up sweep: no container holds it and the agent cannot list its ports",
}


class PortReleaser:
    """Deletes one port at a time; a failed Delete is logged and left to the next pass."""

    def __init__(
        self,
        agent: HostAgent,
        owned: OwnedPorts,
        leases: DeviceLeases,
        devinfo: DevInfoStore,
        stats: ReleaseStats,
        functions: NetworkFunctions,
        spared: Callable[[str], bool] = lambda port_id: False,
    ) -> None:
        """`spared` names the port IDs never to delete here (prewarmed ones)."""
        self._agent = agent
        self._spared = spared
        self._owned = owned
        self._leases = leases
        self._devinfo = devinfo
        self._stats = stats
        self._functions = functions

    def spares(self, port_id: str) -> bool:
        """Whether the port is one never to delete here (prewarmed)."""
        return self._spared(port_id)

    async def release(self, port: PortState, owner: PoolMember | None, reason: str) -> bool:
        """Delete `port` (of `owner`, None for a device no longer on this node); a network
        function the device is part of goes first."""
        if self._spared(port.port_id):
            log.info("port %s not released: it is prewarmed for the next pod", port.name)
            return False
        started = time.monotonic()
        try:
            if owner is not None:
                await self._functions.unchain(owner.id)
            await self._agent.delete_port(port.name)
        except PortError as error:
            log.error("could not release port %s: %s (next pass retries)", port.name, error)
            return False
        self._owned.forget(port.port_id)
        resource = owner.resource if owner else "unknown"
        device = owner.id if owner else "(no longer on this node)"
        if owner is not None:
            self._leases.released(owner.id)
            try:
                self._devinfo.remove(resource, owner.id)
            except (DevInfoError, OSError) as error:
                log.error("device %s: could not remove device-info file: %s", device, error)
        self._stats.releases[(resource, reason)] += 1
        log.info(
            "released port %s of device %s (%s) in %.1f ms: %s",
            port.name,
            device,
            resource,
            (time.monotonic() - started) * 1000,
            REASONS[reason],
        )
        return True

    async def release_unless_busy(
        self, port: PortState, owner: PoolMember | None, since: float, reason: str = "unheld"
    ) -> bool:
        """As a pass does: under the device's release lock, and not if an Allocate took the
        device meanwhile (earlier deletes of the pass took time). True once it is gone."""
        if owner is None:
            return await self.release(port, None, reason)
        async with self._leases.release_lock(owner.id):
            if self._leases.busy(owner.id, since):
                log.info("port %s not released: its device was just allocated", port.port_id)
                return False
            return await self.release(port, owner, reason)
