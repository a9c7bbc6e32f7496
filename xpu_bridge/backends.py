"""The host agent backend the config names, with what comes with it: health, heartbeat,
VF creation and network functions (wiring, like daemon.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.common.loops import loop_time
from xpu_bridge.config import Config
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.heartbeat import Heartbeat
from xpu_bridge.hostagent.opi_evpn import BridgePortClient
from xpu_bridge.hostagent.ports import HostAgent
from xpu_bridge.hostagent.vendor_plugin import VendorPluginClient
from xpu_bridge.node.network_functions import NetworkFunctions
from xpu_bridge.node.vf_creation import VfCreator
from xpu_bridge.ops.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Backend:
    """One host agent and its health, fed by every call we make to it (and its heartbeat)."""

    client: HostAgent
    health: AgentHealth
    heartbeat: Heartbeat | None
    vfs: VfCreator
    functions: NetworkFunctions

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    def up(self) -> bool:
        return self.health.up(loop_time())

    def not_ready(self) -> str | None:
        return self.health.not_ready(loop_time())

    def failing_creates(self) -> int:
        return self.health.failing_creates

    @classmethod
    def connect(cls, config: Config, metrics: Metrics, sysfs_root: Path) -> Backend:
        agent = config.host_agent
        health = AgentHealth(agent.unhealthy_after_seconds, agent.failing_creates_unready)

        def observe(method: str, code: str, seconds: float) -> None:
            """Every call feeds the metrics and the agent's health (Allocates included)."""
            metrics.observe_opi(method, code, seconds)
            health.observe(code, method)

        if not config.vendor_plugin:
            client = BridgePortClient(agent, observer=observe)
            return cls(client, health, None, VfCreator(sysfs_root), NetworkFunctions(None))
        plugin = VendorPluginClient(agent, dpu_mode=config.mode == "dpu", observer=observe)
        return cls(
            plugin,
            health,
            Heartbeat(plugin, health, agent.heartbeat_seconds),
            VfCreator(sysfs_root, plugin.set_num_vfs),
            NetworkFunctions(plugin),
        )
