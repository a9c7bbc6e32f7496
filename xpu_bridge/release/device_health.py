"""Device health: Unhealthy while the agent is unreachable too long, or the port reports ERROR."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xpu_bridge.hostagent.ports import PortState
from xpu_bridge.node.pool_set import PoolSet

log = logging.getLogger(__name__)

AGENT_UNREACHABLE = "host agent unreachable"


async def mark_device_health(
    pools: PoolSet, owned: Mapping[str, PortState], agent_down: str | None
) -> None:
    """Set every pool's Unhealthy devices (ListAndWatch re-sends the list when one flips);
    `agent_down` is why the agent counts as down, if it does."""
    for pool in pools:
        unhealthy: dict[str, str] = {}
        for entry in pool.devices():
            port = owned.get(entry.spec.port_id)
            if agent_down:
                unhealthy[entry.id] = agent_down
            elif port is not None and port.component_errors:
                unhealthy[entry.id] = "; ".join(port.component_errors)
        if await pool.set_health(unhealthy):
            log.warning(
                "pool %s: %d device(s) unhealthy%s",
                pool.resource_name,
                len(unhealthy),
                f" ({agent_down})" if agent_down else "",
            )
