"""Rescans: read sysfs again and move devices that appeared or vanished into or out of pools.

A device whose port is in use never moves: when a new config (or sysfs) would put it in
another pool, or in none, it stays in its pool, not handed out (Unhealthy there), until it
is released; a retired pool keeps its devices in use the same way. While anything waits
like that, the last scan is applied again every release interval, without reading sysfs.
With cdi on, every apply ends by bringing the CDI specs in step (node/cdi.py: only a changed
spec is written), so a pool added by a reload has its spec before it registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.common.loops import keep_running, loop_time
from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_names import PortNaming, port_naming
from xpu_bridge.node.cdi import CdiSpecs
from xpu_bridge.node.inventory import Device, Inventory, discover
from xpu_bridge.node.pool import DevicePool, PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.selection import Assignment, assign

log = logging.getLogger(__name__)

InUse = Callable[[PoolDevice], bool]
"""Whether a device's port may be in use (held, being attached, not yet released)."""


@dataclass(frozen=True, slots=True)
class Scan:
    """What one scan found, which pool each device joins, and how the backend names ports."""

    inventory: Inventory
    assignment: Assignment
    naming: PortNaming


@dataclass(frozen=True, slots=True)
class Pin:
    """A device in use that stays in `pool` although the assignment puts it elsewhere."""

    pool: DevicePool
    device: Device
    reason: str


async def scan(config: Config, sysfs_root: Path) -> Scan:
    """Discovery off the event loop (thousands of devices), then selection into pools."""
    inventory = await asyncio.to_thread(discover, sysfs_root)
    for problem in inventory.problems:
        log.warning("sysfs: %s", problem)
    assignment = assign(config, inventory.devices)
    return Scan(inventory, assignment, port_naming(config, assignment.pf_positions()))


def _bridge_port(entry: PoolDevice) -> tuple[object, ...]:
    """What a bridgePort change changes in a spec (the MAC and port ID are the device's)."""
    return (entry.spec.ptype, entry.spec.logical_bridges)


class Rescanner:
    """Keeps the pools in step with sysfs; ListAndWatch follows each pool by itself. `lock`
    is held by every rescan, and by a config reload around its changes to the pools."""

    def __init__(
        self,
        config: Config,
        sysfs_root: Path,
        pools: PoolSet,
        in_use: InUse = lambda entry: False,
        cdi: CdiSpecs | None = None,
    ) -> None:
        self.config = config
        self.sysfs_root = sysfs_root
        self.pools = pools
        self.in_use = in_use
        self.cdi = cdi
        self.lock = asyncio.Lock()
        self._last_conflicts: tuple[str, ...] = ()
        self._last: Scan | None = None
        self._full_due = 0.0
        self._wake = asyncio.Event()
        """Set when devices start to wait for their release: the pause gets shorter."""

    async def run(self) -> None:
        """Every rescanIntervalSeconds until cancelled; a failed scan keeps the last list."""
        self._full_due = loop_time() + self.config.rescan_interval_seconds
        await keep_running(
            f"rescan of {self.sysfs_root}",
            self._tick,
            self._pause,
            meanwhile="keeping the last device list",
        )

    async def _pause(self) -> None:
        wait = self._full_due - loop_time()
        if self.pools.settling:
            wait = min(wait, self.config.release.interval_seconds)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))

    async def _tick(self) -> None:
        if loop_time() >= self._full_due or self._last is None:
            await self.rescan()
            return
        async with self.lock:
            await self.apply(self._last)

    async def rescan(self) -> None:
        async with self.lock:
            found = await scan(self.config, self.sysfs_root)
            await self.apply(found)

    async def apply(self, found: Scan) -> None:
        """Install a scan's result; the caller holds `lock`."""
        if found is not self._last:
            self._full_due = loop_time() + self.config.rescan_interval_seconds
        self._last = found
        assignment = found.assignment
        if assignment.conflicts != self._last_conflicts:
            for conflict in assignment.conflicts:
                log.error("config: %s; it stays in the first pool", conflict)
            self._last_conflicts = assignment.conflicts
        pins = self._pins(found)
        self._say_pins(pins)
        await self._keep_retired(pins)
        naming = self._naming(found, pins)
        self.pools.naming = naming
        for pool in self.pools:
            devices = [
                device
                for device in assignment.pools.get(pool.resource_name, ())
                if device.id not in pins
            ]
            devices += [pin.device for pin in pins.values() if pin.pool is pool]
            await self._replace(pool, devices, naming)
            for device_id, pin in pins.items():
                if pin.pool is pool:
                    await pool.mark_unusable(device_id, pin.reason)
        self._forget_released_specs()
        if self.cdi is not None:  # retired pools too: their devices in use may restart
            self.cdi.follow(self.pools.accounted())
        if self.pools.settling:
            self._wake.set()

    def _pins(self, found: Scan) -> dict[str, Pin]:
        """Devices in use whose pool would change: those of retired pools (as they were,
        even gone from sysfs) and those of pools served now (while sysfs shows them)."""
        target = {d.id: name for name, ds in found.assignment.pools.items() for d in ds}
        present = {device.id: device for device in found.inventory.devices}
        pins: dict[str, Pin] = {}
        for pool in self.pools.retired():
            for entry in pool.devices():
                if self.in_use(entry):
                    reason = f"device {entry.id}: its pool {pool.resource_name} was removed"
                    pins[entry.id] = Pin(pool, entry.device, reason)
        for pool in self.pools:
            for entry in pool.devices():
                goes = target.get(entry.id)
                device = present.get(entry.id)
                if goes == pool.resource_name or device is None or not self.in_use(entry):
                    continue
                pins[entry.id] = Pin(
                    pool,
                    device,
                    f"device {entry.id} is in use and stays in {pool.resource_name} until "
                    f"released; then it {f'joins {goes}' if goes else 'leaves the pool'} "
                    "(the pools' selectors changed)",
                )
        return pins

    def _naming(self, found: Scan, pins: dict[str, Pin]) -> PortNaming:
        """The scan's port naming, with the PFs of the devices that stay in a pool served
        now (a {pf} in a port name is the PF's position among the PFs the pools have)."""
        served = [pin for pin in pins.values() if pin.pool.resource_name in self.pools]
        pfs = {pin.device.pf_address for pin in served}
        positions = found.assignment.pf_positions()
        if pfs <= set(positions):
            return found.naming
        pfs |= set(positions)
        return port_naming(self.config, {pf: at for at, pf in enumerate(sorted(pfs))})

    async def _keep_retired(self, pins: dict[str, Pin]) -> None:
        """A retired pool keeps its devices in use, named as when it was retired."""
        for pool in self.pools.retired():
            keep = [pin.device for pin in pins.values() if pin.pool is pool]
            await pool.replace_devices(keep)
            if not keep:
                self.pools.drop_retired(pool.resource_name)
                log.info("pool %s: no device of it is in use any more", pool.resource_name)

    async def _replace(self, pool: DevicePool, devices: list[Device], naming: PortNaming) -> None:
        before = {entry.id: entry for entry in pool.devices()}
        changed = await pool.replace_devices(devices, naming)
        await self.pools.claim_names()
        for entry in pool.devices():
            old = before.get(entry.id)
            if old is not None and _bridge_port(old) != _bridge_port(entry) and self.in_use(old):
                self.pools.keep_spec(entry.id, self.pools.attached_spec(old))
        if changed:
            after = {entry.id for entry in pool.devices()}
            log.info(
                "pool %s: +%s -%s",
                pool.resource_name,
                sorted(after - set(before)) or "[]",
                sorted(set(before) - after) or "[]",
            )

    def _forget_released_specs(self) -> None:
        for device_id in self.pools.kept():
            member = self.pools.find(device_id)
            if member is None or not self.in_use(member.entry):
                self.pools.forget_spec(device_id)

    def _say_pins(self, pins: dict[str, Pin]) -> None:
        reasons = {device_id: pin.reason for device_id, pin in pins.items()}
        before = self.pools.pinned()
        for device_id, reason in sorted(reasons.items()):
            if before.get(device_id) != reason:
                log.info("%s", reason)
        for device_id in sorted(set(before) - set(reasons)):
            log.info("device %s is no longer in use: it goes where the config puts it", device_id)
        self.pools.set_pinned(reasons)
