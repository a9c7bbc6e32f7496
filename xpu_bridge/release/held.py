"""Held ports: which of our ports containers hold, read from PodResources, as port IDs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xpu_bridge.config import Config
from xpu_bridge.hostagent.ports import PortState
from xpu_bridge.kubelet.pod_resources import HeldDevices, HeldDeviceSource
from xpu_bridge.node.pool_set import PoolSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeldPorts:
    """Port IDs of every held device; `unmapped` are held SFs this daemon never saw in sysfs
    (an SF's port ID needs its PF and sfnum, which only sysfs tells)."""

    port_ids: set[str]
    unmapped: set[str]


class HeldPortMap:
    """Reads who holds what, and maps it to port IDs even for devices gone from sysfs."""

    def __init__(
        self,
        config: Config,
        pools: PoolSet,
        source: HeldDeviceSource,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """`clock` stamps each read (the leases' clock: last_read_at compares with theirs)."""
        self._pools = pools
        self._source = source
        self._prefixes: set[str] = set()
        self._stale: set[str] = set()
        self._unmapped: set[str] = set()
        self._clock = clock
        self.last_ids: frozenset[str] | None = None
        """Every held device ID as the last successful read found, None before one."""
        self.last_read_at = float("-inf")
        self.follow(config)

    def follow(self, config: Config) -> None:
        """A reloaded config's prefixes join the earlier ones: pods of pools renamed or
        removed since may hold devices under those for a long while yet."""
        self._prefixes |= {config.resource_prefix} | {
            r.resource_prefix for r in config.resource_list if r.resource_prefix
        }

    def ours(self, resource: str) -> bool:
        """Served now (or retired with devices in use), or under one of our prefixes: a pool
        renamed or removed from the config may still have running pods, and their ports are
        still theirs."""
        return self._pools.accounts_for(resource) or resource.split("/", 1)[0] in self._prefixes

    async def read(self) -> HeldDevices:
        """Raises PodResourcesUnavailable when the kubelet cannot be asked."""
        read_at = self._clock()
        held = await self._source.held(self.ours)
        self.last_ids, self.last_read_at = frozenset(held.all_ids()), read_at
        stale = set(held.by_resource) - set(self._pools.names())
        if stale - self._stale:
            log.warning(
                "containers still hold devices of %s, which this config no longer serves; "
                "their ports are kept until those pods end",
                ", ".join(sorted(stale)),
            )
        self._stale = stale
        return held

    async def read_all(self) -> HeldDevices:
        """Every device any container holds, whoever's resource it is (VF creation must not
        take a VF from a pod of another device plugin)."""
        return await self._source.held(lambda resource: True)

    def port_ids(self, held: HeldDevices) -> HeldPorts:
        port_ids: set[str] = set()
        unmapped: set[str] = set()
        for device_id in held.all_ids():
            port_id = self._pools.known_port_id(device_id)
            if port_id is None:
                port_id = self._pools.naming.held_vf_port_id(device_id)
            if port_id is None:
                unmapped.add(device_id)
            else:
                port_ids.add(port_id)
        if unmapped and unmapped != self._unmapped:
            log.warning(
                "containers hold device(s) %s that this daemon has not seen in sysfs, so it "
                "cannot name their ports; no SF port is released until they are back or no "
                "longer held",
                ", ".join(sorted(unmapped)),
            )
        self._unmapped = unmapped
        return HeldPorts(port_ids, unmapped)


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
