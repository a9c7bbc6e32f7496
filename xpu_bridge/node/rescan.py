"""Rescans: read sysfs again and move devices that appeared or vanished into or out of pools."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from xpu_bridge.common.loops import every, keep_running
from xpu_bridge.config import Config
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.selection import Assignment, assign

log = logging.getLogger(__name__)


async def scan(config: Config, sysfs_root: Path) -> Assignment:
    """Discovery off the event loop (thousands of devices), then selection into pools."""
    inventory = await asyncio.to_thread(discover, sysfs_root)
    for problem in inventory.problems:
        log.warning("sysfs: %s", problem)
    return assign(config, inventory.devices)


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
        assignment = await scan(self.config, self.sysfs_root)
        if assignment.conflicts != self._last_conflicts:
            for conflict in assignment.conflicts:
                log.error("config: %s; it stays in the first pool", conflict)
            self._last_conflicts = assignment.conflicts
        for pool in self.pools:
            before = {entry.id for entry in pool.devices()}
            if await pool.replace_devices(assignment.pools.get(pool.resource_name, ())):
                after = {entry.id for entry in pool.devices()}
                log.info(
                    "pool %s: +%s -%s",
                    pool.resource_name,
                    sorted(after - before) or "[]",
                    sorted(before - after) or "[]",
                )
