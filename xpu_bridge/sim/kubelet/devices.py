"""Device state from ListAndWatch: allDevices and healthyDevices of each resource (manager.go)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Set

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp

from .model import DeviceView
from .rules import HEALTHY, UNHEALTHY


class DeviceState:
    """What the kubelet last heard of each resource's devices; health is its own view."""

    def __init__(self) -> None:
        self._devices: dict[str, dict[str, dp.Device]] = {}  # allDevices
        self._healthy: dict[str, set[str]] = {}  # healthyDevices

    def add_resource(self, resource: str) -> None:
        """A plugin connected: the resource is known, even before its first device list."""
        self._healthy.setdefault(resource, set())

    def replace(self, resource: str, devices: Sequence[dp.Device]) -> None:
        """genericDeviceUpdateCallback: the message is the whole set."""
        self._devices[resource] = {d.ID: d for d in devices}
        self._healthy[resource] = {d.ID for d in devices if d.health == HEALTHY}

    def mark_unhealthy(self, resource: str) -> None:
        """markResourceUnhealthy: ListAndWatch ended; devices stay known, none is healthy."""
        self._healthy[resource] = set()

    def forget(self) -> None:
        """After a restart: no devices until plugins register again."""
        self._devices.clear()
        for resource in self._healthy:  # readCheckpoint: known resource, zero devices
            self._healthy[resource] = set()

    def healthy(self, resource: str) -> Set[str] | None:
        """IDs of the healthy devices; None if no plugin of resource ever connected."""
        return self._healthy.get(resource)

    def numa(self, resource: str, device_ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """NUMA nodes of each device, () for devices the kubelet does not know (any more)."""
        known = self._devices.get(resource, {})
        return {d: numa_nodes(known[d]) if d in known else () for d in device_ids}

    def views(self, resource: str) -> list[DeviceView]:
        """The device list of a resource as the kubelet last saw it, sorted by ID."""
        healthy = self._healthy.get(resource, set())
        return [
            DeviceView(
                id=d.ID, health=HEALTHY if d.ID in healthy else UNHEALTHY, numa_nodes=numa_nodes(d)
            )
            for d in sorted(self._devices.get(resource, {}).values(), key=lambda d: d.ID)
        ]

    def allocatable(self) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        """GetAllocatableDevices: (resource, ID, NUMA nodes) of known devices healthy now."""
        for resource, devices in self._devices.items():
            healthy = self._healthy.get(resource, set())
            for dev_id, device in devices.items():
                if dev_id in healthy:
                    yield resource, dev_id, numa_nodes(device)


def numa_nodes(device: dp.Device) -> tuple[int, ...]:
    return tuple(n.ID for n in device.topology.nodes) if device.HasField("topology") else ()
