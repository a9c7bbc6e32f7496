"""The agent's store: its ports and logical bridges, and the bridges it starts out with."""

from __future__ import annotations

from collections.abc import Iterable

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim.host_agent.bridges import Bridges
from xpu_bridge.sim.host_agent.config import AgentConfig
from xpu_bridge.sim.host_agent.names import seed_name
from xpu_bridge.sim.host_agent.ports import Ports


class Registry:
    """Ports and logical bridges with upstream's asynchronous lifecycle, kept in memory."""

    def __init__(self, config: AgentConfig, seeds: Iterable[str]) -> None:
        self.bridges = Bridges(config)
        self.ports = Ports(config, self.bridges)
        self._seeds = [seed_name(bridge) for bridge in seeds]
        self._seed()

    def _seed(self) -> None:
        for index, name in enumerate(self._seeds):
            self.bridges.seed_bridge(name, vlan_id=100 + index, vni=None)

    def reset(self) -> None:
        """Back to the seeded bridges and no ports."""
        self.ports.clear()
        self.bridges.clear()
        self._seed()

    def add_bridge(self, bridge: str, vlan_id: int | None, vni: int | None) -> pb.LogicalBridge:
        """A bridge that is UP at once (`bridge` is an ID or full name); not a seed."""
        vlan = vlan_id if vlan_id is not None else 100 + len(self.bridges.entries)
        return self.bridges.seed_bridge(seed_name(bridge), vlan_id=vlan, vni=vni)
