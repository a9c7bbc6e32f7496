"""Rescans: read sysfs again and move devices that appeared or vanished into or out of pools."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.common.loops import every, keep_running
from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_names import PortNaming, port_naming
from xpu_bridge.node.inventory import Inventory, discover
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.selection import Assignment, assign

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scan:
    """What one scan found, which pool each device joins, and how the backend names ports."""

    inventory: Inventory
    assignment: Assignment
    naming: PortNaming


async def scan(config: Config, sysfs_root: Path) -> Scan:
    """Discovery off the event loop (thousands of devices), then selection into pools."""
    inventory = await asyncio.to_thread(discover, sysfs_root)
    for problem in inventory.problems:
        log.warning("sysfs: %s", problem)
    assignment = assign(config, inventory.devices)
    return Scan(inventory, assignment, port_naming(config, assignment.pf_positions()))


class Rescanner:
    """Keeps the pools in step with sysfs; ListAndWatch follows each pool by itself."""

    def __init__(self, config: Config, sysfs_root: Path, pools: PoolSet) -> None:
        self.config = config
        self.sysfs_root = sysfs_root
        self.pools = pools
        self._last_conflicts: tuple[str, ...] = ()

    async def run(self) -> None:
        """Every rescanIntervalSeconds until cancelled; a failed scan keeps the last list."""
        await keep_running(
            f"rescan of {self.sysfs_root}",
            self.rescan,
            every(lambda: self.config.rescan_interval_seconds),
            meanwhile="keeping the last device list",
        )

    async def rescan(self) -> None:
        found = await scan(self.config, self.sysfs_root)
        assignment = found.assignment
        self.pools.naming = found.naming
        if assignment.conflicts != self._last_conflicts:
            for conflict in assignment.conflicts:
                log.error("config: %s; it stays in the first pool", conflict)
            self._last_conflicts = assignment.conflicts
        for pool in self.pools:
            before = {entry.id for entry in pool.devices()}
            devices = assignment.pools.get(pool.resource_name, ())
            changed = await pool.replace_devices(devices, found.naming)
            await self.pools.claim_names()
            if changed:
                after = {entry.id for entry in pool.devices()}
                log.info(
                    "pool %s: +%s -%s",
                    pool.resource_name,
                    sorted(after - before) or "[]",
                    sorted(before - after) or "[]",
                )
