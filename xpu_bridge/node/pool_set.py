"""The node's pools by resource name, and the lookups that cross them (by device, by port).

After a config reload a removed pool is retired rather than forgotten while devices of it are
in use: the kubelet no longer hears of it, but its devices are still found by ID and port, so
their ports are kept, repaired and released like any other. A device whose pool's
bridgePort changed while its port was in use keeps the spec it was attached with (`kept`)
until it is released or attached again; one that the config moved to another pool while in
use stays where it was (`pinned`, not handed out there) until it is released.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_names import OpiPortIds, PortNaming
from xpu_bridge.hostagent.ports import PortSpec, PortState
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
    """Every pool of the node, in config order; pools never share a device. Iterating, `in`,
    `[]` and names() see the pools served now; the lookups by device and port see retired
    pools too."""

    def __init__(self, pools: list[DevicePool], naming: PortNaming | None = None) -> None:
        """`naming` is the backend's, as of the last scan (PF positions can change)."""
        self._pools = {pool.resource_name: pool for pool in pools}
        self.naming: PortNaming = naming or (pools[0].naming if pools else OpiPortIds())
        self._owners: dict[str, str] = {}
        self._retired: dict[str, DevicePool] = {}
        self._kept: dict[str, PortSpec] = {}
        self._pinned: dict[str, str] = {}

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

    def accounted(self) -> list[DevicePool]:
        """The pools served now, then the retired ones: every pool whose ports are ours."""
        return [*self._pools.values(), *self._retired.values()]

    def find(self, device_id: str) -> PoolMember | None:
        for pool in self.accounted():
            entry = pool.get(device_id)
            if entry is not None:
                return PoolMember(pool, entry)
        return None

    def by_port_id(self) -> dict[str, PoolMember]:
        return {
            entry.spec.port_id: PoolMember(pool, entry)
            for pool in self.accounted()
            for entry in pool.devices()
        }

    def known_port_id(self, device_id: str) -> str | None:
        """The port ID of any device a pool has had, even one sysfs no longer shows."""
        return next(
            (port for pool in self.accounted() if (port := pool.known_port_id(device_id))),
            None,
        )

    # ------------------------------------------------------------ config reloads

    def retired(self) -> list[DevicePool]:
        """Pools a reload removed while devices of theirs were in use."""
        return list(self._retired.values())

    def accounts_for(self, resource: str) -> bool:
        """Served now, or retired with devices still in use."""
        return resource in self._pools or resource in self._retired

    def add(self, pool: DevicePool) -> None:
        self._retired.pop(pool.resource_name, None)
        self._pools[pool.resource_name] = pool

    def revive(self, resource: str) -> DevicePool | None:
        """A retired pool that a reload configures again, with the devices still in use."""
        pool = self._retired.pop(resource, None)
        if pool is not None:
            self._pools[resource] = pool
        return pool

    def retire(self, resource: str) -> DevicePool | None:
        """No longer served; kept for its devices in use until drop_retired()."""
        pool = self._pools.pop(resource, None)
        if pool is not None:
            self._retired[resource] = pool
        return pool

    def drop_retired(self, resource: str) -> None:
        self._retired.pop(resource, None)

    def arrange(self, order: list[str]) -> None:
        """Put the pools served in config order (names not served are skipped)."""
        self._pools = {name: self._pools[name] for name in order if name in self._pools} | {
            name: pool for name, pool in self._pools.items() if name not in order
        }

    def attached_spec(self, entry: PoolDevice) -> PortSpec:
        """The spec a device's port has: the one it was attached with before its pool's
        bridgePort changed, else its pool's."""
        return self._kept.get(entry.id, entry.spec)

    def keep_spec(self, device_id: str, spec: PortSpec) -> None:
        """The device's port stays as it was attached; the first kept spec wins."""
        self._kept.setdefault(device_id, spec)

    def forget_spec(self, device_id: str) -> None:
        self._kept.pop(device_id, None)

    def kept(self) -> dict[str, PortSpec]:
        return dict(self._kept)

    def pinned(self) -> dict[str, str]:
        """Devices in use that stay in their pool although the config moved them (why)."""
        return dict(self._pinned)

    def set_pinned(self, reasons: dict[str, str]) -> None:
        self._pinned = dict(reasons)

    @property
    def settling(self) -> bool:
        """Devices wait for their release: pinned, in a retired pool, or on a kept spec."""
        return bool(self._pinned or self._retired or self._kept)

    def port_attached(self, port: PortState) -> None:
        """An Allocate attached this port with its pool's spec as it is now."""
        for device_id, spec in list(self._kept.items()):
            if spec.port_id == port.port_id:
                del self._kept[device_id]
