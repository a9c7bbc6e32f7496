"""Stuck deletes: a port dying for many passes may have lost its Delete; send it again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from xpu_bridge.hostagent.ports import HostAgent, OperStatus, PortError, PortState
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool_set import PoolMember

log = logging.getLogger(__name__)

STUCK_DELETE_PASSES = 12


def resend_due(passes: int) -> bool:
    """After 12, 24, 48, 96 ... passes: a Delete restarts a slow deletion, so back off."""
    rounds, rest = divmod(passes, STUCK_DELETE_PASSES)
    return rest == 0 and rounds > 0 and rounds & (rounds - 1) == 0


class StuckDeletes:
    """Counts the passes each owned port has been TO_BE_DELETED."""

    def __init__(self, agent: HostAgent, leases: DeviceLeases) -> None:
        self._agent = agent
        self._leases = leases
        self._dying_passes: dict[str, int] = {}

    async def resend(
        self,
        owned: Mapping[str, PortState],
        by_port: Mapping[str, PoolMember],
        since: float,
    ) -> None:
        dying = {p for p, port in owned.items() if port.oper is OperStatus.TO_BE_DELETED}
        self._dying_passes = {p: self._dying_passes.get(p, 0) + 1 for p in dying}
        for port_id, passes in self._dying_passes.items():
            if not resend_due(passes):
                continue
            owner = by_port.get(port_id)
            lock = self._leases.release_lock(owner.id) if owner else asyncio.Lock()
            async with lock:
                if owner is not None and self._leases.busy(owner.id, since):
                    continue
                current = await self._fresh(owned[port_id].name)
                if current is None or current.oper is not OperStatus.TO_BE_DELETED:
                    continue
                log.warning("port %s is still being deleted; sending Delete again", port_id)
                with contextlib.suppress(PortError):
                    await self._agent.delete_port(current.name)

    async def _fresh(self, name: str) -> PortState | None:
        try:
            return await self._agent.get_port(name)
        except PortError:
            return None
