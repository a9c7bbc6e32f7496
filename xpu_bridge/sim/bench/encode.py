"""ListAndWatch encode time, in the bench's process: the daemon's own pools and message code
build and serialize the full device list of every pool, as the first ListAndWatch sends it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from xpu_bridge.config import parse_config
from xpu_bridge.kubelet.plugin_server import DeviceMessages
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.pool import DevicePool
from xpu_bridge.node.selection import PoolMatcher

REPEATS = 5


async def encode_seconds(sysfs: Path, raw_config: dict[str, Any], repeats: int = REPEATS) -> float:
    """Median over `repeats` of: every pool's snapshot, its ListAndWatchResponse and the
    bytes on the wire (SerializeToString), summed over the pools."""
    config = parse_config(raw_config)
    assignment = PoolMatcher(config).assign(discover(sysfs).devices)
    pools = []
    for resource in config.resource_list:
        name = config.full_resource_name(resource)
        pool = DevicePool(name, resource)
        await pool.replace_devices(assignment.pools.get(name, ()))
        pools.append(pool)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for pool in pools:  # a new cache: every message built, as for a new stream
            DeviceMessages().response(pool.snapshot()).SerializeToString()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
