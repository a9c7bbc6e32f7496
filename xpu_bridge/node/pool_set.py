"""The node's pools by resource name, and the lookups that cross them (by device, by port)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_names import OpiPortIds, PortNaming
from xpu_bridge.node.pool import DevicePool, PoolDevice
from xpu_bridge.node.selection import Assignment


@dataclass(frozen=True, slots=True)
class PoolMember:
    """A device of one of our pools."""

    pool: DevicePool
    entry: PoolDevice

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def resource(self) -> str:
        return self.pool.resource_name


class PoolSet:
    """Every pool of the node, in config order; pools never share a device."""

    def __init__(self, pools: list[DevicePool], naming: PortNaming | None = None) -> None:
        """`naming` is the backend's, as of the last scan (PF positions can change)."""
        self._pools = {pool.resource_name: pool for pool in pools}
        self.naming: PortNaming = naming or (pools[0].naming if pools else OpiPortIds())
        self._owners: dict[str, str] = {}

    @classmethod
    async def build(cls, config: Config, assignment: Assignment, naming: PortNaming) -> PoolSet:
        pools = []
        for resource in config.resource_list:
            name = config.full_resource_name(resource)
            pool = DevicePool(name, resource, naming)
            await pool.replace_devices(assignment.pools.get(name, ()))
            pools.append(pool)
        built = cls(pools, naming)
        await built.claim_names()
        return built

    async def claim_names(self) -> None:
        """A port ID belongs to the first device that had it, for the daemon's life; another
        device named alike (a shifted {pf}, a template that cannot tell two apart) is refused,
        so that no two devices ever share a port."""
        for pool in self._pools.values():
            for entry in pool.devices():
                owner = self._owners.setdefault(entry.spec.port_id, entry.id)
                if owner != entry.id:
                    await pool.mark_unusable(
                        entry.id,
                        f"device {entry.id}: its port name {entry.spec.port_id} belongs to "
                        f"device {owner} (PFs appeared or vanished, or the name template "
                        "cannot tell them apart): fix hostAgent.portNameTemplate or restart "
                        "xpu-bridge once neither device is held",
                    )

    def __iter__(self) -> Iterator[DevicePool]:
        return iter(self._pools.values())

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, resource: object) -> bool:
        return resource in self._pools

    def __getitem__(self, resource: str) -> DevicePool:
        return self._pools[resource]

    def names(self) -> list[str]:
        return list(self._pools)

    def get(self, resource: str) -> DevicePool | None:
        return self._pools.get(resource)

    def find(self, device_id: str) -> PoolMember | None:
        for pool in self._pools.values():
            entry = pool.get(device_id)
            if entry is not None:
                return PoolMember(pool, entry)
        return None

    def by_port_id(self) -> dict[str, PoolMember]:
        return {
            entry.spec.port_id: PoolMember(pool, entry)
            for pool in self._pools.values()
            for entry in pool.devices()
        }

    def known_port_id(self, device_id: str) -> str | None:
        """The port ID of any device a pool has had, even one sysfs no longer shows."""
        return next(
            (port for pool in self._pools.values() if (port := pool.known_port_id(device_id))),
            None,
        )
