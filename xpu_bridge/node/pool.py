"""Device pools: one per resource, holding its devices, their health, and the preferred pick."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace

from xpu_bridge.common.pci import mac_text
from xpu_bridge.config import ResourceConfig
from xpu_bridge.hostagent.port_names import FunctionRef, OpiPortIds, PortNaming
from xpu_bridge.hostagent.ports import PortSpec
from xpu_bridge.node.inventory import Device

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True, slots=True)
class PoolDevice:
    """A device with everything Allocate needs precomputed, so Allocate reads nothing."""

    device: Device
    spec: PortSpec

    @property
    def id(self) -> str:
        return self.device.id


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One ListAndWatch entry."""

    id: str
    health: str
    numa_node: int | None


def function_ref(device: Device) -> FunctionRef:
    return FunctionRef(device.kind, device.pci_address, device.pf_address, device.index)


def port_spec(device: Device, resource: ResourceConfig, naming: PortNaming | str = "") -> PortSpec:
    """The port a device needs; `naming` is the backend's (a string: an opi ID prefix)."""
    if isinstance(naming, str):
        naming = OpiPortIds(naming)
    port_id = naming.port_id(function_ref(device))
    return PortSpec(
        port_id=port_id,
        mac=naming.mac(port_id, device.mac),
        ptype=resource.bridge_port.type,
        logical_bridges=resource.bridge_port.on_the_wire,
    )


def env_name(resource_name: str) -> str:
    """`opi.io/red` -> `PCIDEVICE_OPI_IO_RED`, as sriov-network-device-plugin names it."""
    return "PCIDEVICE_" + re.sub(r"[./-]", "_", resource_name).upper()


class _ChangeFeed:
    """A version that moves on every change, and the condition watchers wait on for it."""

    def __init__(self) -> None:
        self._version = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    async def wait_past(self, seen: int) -> int:
        """Wait until the version is not `seen`; return it."""
        async with self._changed:
            while self._version == seen:
                await self._changed.wait()
            return self._version


class DevicePool:
    """The devices of one extended resource; watchers see every change as a new full list."""

    def __init__(
        self, resource_name: str, resource: ResourceConfig, naming: PortNaming | str = ""
    ) -> None:
        """`naming` is the backend's port naming (a string: an opi-evpn-bridge ID prefix)."""
        self.resource_name = resource_name
        self.resource = resource
        self.env_name = env_name(resource_name)
        self.naming = OpiPortIds(naming) if isinstance(naming, str) else naming
        self._devices: dict[str, PoolDevice] = {}
        self._known_ports: dict[str, str] = {}
        self._unhealthy: dict[str, str] = {}
        self._unusable: dict[str, str] = {}
        self._changes = _ChangeFeed()
        self.prewarmed: frozenset[str] = frozenset()
        """Devices whose port is attached and UP ahead of demand (node/prewarm.py): the
        preferred pick offers them first."""

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> PoolDevice | None:
        return self._devices.get(device_id)

    def known_port_id(self, device_id: str) -> str | None:
        """The port ID of any device this pool has had, even one sysfs no longer shows."""
        return self._known_ports.get(device_id)

    def devices(self) -> list[PoolDevice]:
        return list(self._devices.values())

    async def _bump(self) -> None:
        await self._changes.bump()

    async def wake_watchers(self) -> None:
        await self._bump()

    async def replace_devices(
        self, devices: Iterable[Device], naming: PortNaming | None = None
    ) -> bool:
        """Install a rescan's result (named by `naming`, else as before); returns whether the
        device set changed. A device whose MAC the backend cannot use is listed Unhealthy."""
        if naming is not None:
            self.naming = naming
        fresh = {device.id: self._entry(device) for device in map(self._keep_mac, devices)}
        self._known_ports.update((i, entry.spec.port_id) for i, entry in fresh.items())
        if fresh == self._devices:
            return False
        self._devices = dict(sorted(fresh.items()))
        self._unusable = {
            device_id: f"device {device_id} {problem}"
            for device_id, entry in self._devices.items()
            if (problem := self.naming.mac_problem(entry.spec.mac))
        }
        await self._bump()
        return True

    def _entry(self, device: Device) -> PoolDevice:
        """A device keeps the port ID it first had for the daemon's life: a name template's
        {pf} can shift when a PF appears or vanishes, and a held port must not be renamed."""
        spec = port_spec(device, self.resource, self.naming)
        known = self._known_ports.get(device.id)
        if known is not None and known != spec.port_id:
            spec = replace(spec, port_id=known, mac=self.naming.mac(known, device.mac))
        return PoolDevice(device, spec)

    def unusable_reason(self, device_id: str) -> str | None:
        """Why the backend cannot attach this device at all (no usable MAC, a port name that
        another device has), or None."""
        return self._unusable.get(device_id)

    async def mark_unusable(self, device_id: str, reason: str) -> None:
        if device_id in self._devices and self._unusable.get(device_id) != reason:
            self._unusable[device_id] = reason
            await self._bump()

    async def adopt_mac(self, device_id: str, mac: bytes) -> None:
        """At start-up, a held port's MAC wins over one derived because sysfs showed none."""
        entry = self._devices.get(device_id)
        if entry is None or entry.spec.mac == mac:
            return
        device = replace(entry.device, mac=mac_text(mac))
        self._devices[device_id] = PoolDevice(device, replace(entry.spec, mac=mac))
        if self.naming.mac_problem(mac) is None:
            self._unusable.pop(device_id, None)
        await self._bump()

    def _keep_mac(self, device: Device) -> Device:
        """A VF's netdev leaves the host when a CNI moves it into a pod: its port's MAC must
        not change because of that, so a MAC once seen is kept while sysfs shows none."""
        known = self._devices.get(device.id)
        if device.mac or known is None or not known.device.mac:
            return device
        return replace(device, mac=known.device.mac)

    async def set_health(self, unhealthy: dict[str, str]) -> bool:
        """Mark exactly these devices Unhealthy (value: why); returns whether anything flipped."""
        if unhealthy == self._unhealthy:
            return False
        self._unhealthy = dict(unhealthy)
        await self._bump()
        return True

    def unhealthy_reason(self, device_id: str) -> str | None:
        return self._unhealthy.get(device_id) or self._unusable.get(device_id)

    def snapshot(self) -> list[DeviceView]:
        return [
            DeviceView(
                id=entry.id,
                health=UNHEALTHY if self.unhealthy_reason(entry.id) else HEALTHY,
                numa_node=entry.device.numa_node,
            )
            for entry in self._devices.values()
        ]

    async def watch(self) -> AsyncIterator[list[DeviceView]]:
        """The full list now, then again after every change; ends when the caller stops."""
        seen = -1
        while True:
            seen = await self._changes.wait_past(seen)
            yield self.snapshot()

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        """Pick `size` devices: must_include first, then prewarmed ones (their port is UP
        already), then the rest; each group spread across PFs (or packed onto one)."""
        chosen = list(dict.fromkeys(must_include))[:size]
        per_pf: dict[str, int] = defaultdict(int)
        for device_id in chosen:
            per_pf[self._pf_of(device_id)] += 1
        rest = set(available) - set(chosen)
        warm = rest & self.prewarmed
        for group in (warm, rest - warm):
            self._fill(chosen, per_pf, group, size)
        return chosen

    def _fill(
        self, chosen: list[str], per_pf: dict[str, int], candidates: set[str], size: int
    ) -> None:
        by_pf: dict[str, list[str]] = defaultdict(list)
        for device_id in sorted(candidates):
            by_pf[self._pf_of(device_id)].append(device_id)
        pack = self.resource.allocation_policy == "pack"
        while len(chosen) < size and by_pf:
            pf = min(by_pf, key=lambda p: self._pf_rank(p, per_pf[p], len(by_pf[p]), pack))
            chosen.append(by_pf[pf].pop(0))
            per_pf[pf] += 1
            if not by_pf[pf]:
                del by_pf[pf]

    @staticmethod
    def _pf_rank(pf: str, used: int, left: int, pack: bool) -> tuple[int, int, str]:
        return (-used, -left, pf) if pack else (used, -left, pf)

    def _pf_of(self, device_id: str) -> str:
        entry = self._devices.get(device_id)
        return entry.device.pf_address if entry else ""
