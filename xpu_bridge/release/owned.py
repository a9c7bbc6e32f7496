"""Owned ports: ours on the xPU as the last pass listed them, and since when each is DOWN."""

from __future__ import annotations

import logging
from collections.abc import Callable

from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.port_names import PortNaming
from xpu_bridge.hostagent.ports import HostAgent, OperStatus, PortError, PortState

log = logging.getLogger(__name__)


class OwnedPorts:
    """Ports whose IDs parse as ours under the configured prefix; lists feed agent health."""

    def __init__(
        self,
        agent: HostAgent,
        health: AgentHealth,
        naming: Callable[[], PortNaming],
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        """`naming` answers the backend's current port naming (it tells ours from others')."""
        self.agent = agent
        self.clock = clock
        self.health = health
        self.ports: dict[str, PortState] = {}
        self._naming = naming
        self._budget = max(min(interval, agent.attach_timeout), 1.0)
        self._down_since: dict[str, float] = {}

    def ours(self, port_id: str) -> bool:
        return self._naming().ours(port_id)

    def is_sf(self, port_id: str) -> bool:
        return self._naming().is_sf(port_id)

    async def refresh(self) -> dict[str, PortState] | None:
        """List the agent's ports; None (and the last view kept) when it cannot be reached.

        An agent that cannot list answers the ports we made, which says nothing about its
        health: the heartbeat does, and a pass is skipped while it says down."""
        if not self.agent.capabilities.lists_ports:
            if not self.health.up(self.clock()):
                return None
            ports = await self.agent.list_ports(seconds=self._budget)
            self.ports = {p.port_id: p for p in ports}
            return self.ports
        try:
            ports = await self.agent.list_ports(seconds=self._budget)
        except PortError as error:
            self.health.record(False, self.clock())
            log.debug("ListBridgePorts failed: %s", error)
            return None
        self.health.record(True, self.clock())
        self.ports = {p.port_id: p for p in ports if self.ours(p.port_id)}
        return self.ports

    def track_down(self, now: float) -> None:
        self._down_since = {
            port_id: self._down_since.get(port_id, now)
            for port_id, port in self.ports.items()
            if port.oper is OperStatus.DOWN
        }

    def down_for(self, port_id: str, now: float) -> float:
        return now - self._down_since.get(port_id, now)

    def put(self, port: PortState) -> None:
        self.ports[port.port_id] = port

    def forget(self, port_id: str) -> None:
        self.ports.pop(port_id, None)
