"""The simulated node: its files (fake sysfs, config), xPU agent, kubelet and daemon, in order.

`xpu-bridge simulate` starts all of it in one process; `xpu-bridge sim-kubelet --dir DIR`
writes the same files and serves the kubelet alone, for a real `xpu-bridge run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpu_bridge.config import DPU_VENDOR_PLUGIN, AgentApi, load_config
from xpu_bridge.daemon import Daemon, DaemonOptions
from xpu_bridge.hostagent.opi_evpn import BridgePortClient
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import SimKubelet
from xpu_bridge.sim.kubelet.control import ControlServer
from xpu_bridge.sim.layout import NodeLayout
from xpu_bridge.sim.sysfs import build_node
from xpu_bridge.sim.vendor_plugin import SimVendorPlugin

BRIDGES = "//network.opiproject.org/bridges/"
BRIDGE_NAMES = ("red", "blue-a", "blue-b", "green")
RED, BLUE, GREEN, NF = "opi.io/red", "opi.io/blue", "opi.io/green", "opi.io/nf"
VSP_INTERFACES = 16
NODE_SHAPE = "2 PFs x 8 VFs, 4 SFs"


def simulated_config(root: Path) -> dict[str, Any]:
    """Three pools on a 2 PF x 8 VF node with SFs: access, trunk and SF ports."""
    return {
        "apiVersion": "xpu-bridge/v1",
        "hostAgent": {"endpoint": f"unix://{root}/agent.sock", "attachTimeoutSeconds": 5},
        "release": {"intervalSeconds": 0.5, "graceSeconds": 1, "holdoffSeconds": 1},
        "resourceList": [
            {
                "resourceName": "red",
                "selectors": [{"pfNames": ["ens1f0", "ens1f1#0-3"]}],
                "bridgePort": {"type": "access", "logicalBridges": [BRIDGES + "red"]},
            },
            {
                "resourceName": "blue",
                "selectors": [{"pfNames": ["ens1f1#4-15"]}],
                "bridgePort": {
                    "type": "trunk",
                    "logicalBridges": [BRIDGES + "blue-a", BRIDGES + "blue-b"],
                },
            },
            {
                "resourceName": "green",
                "deviceType": "auxNetDevice",
                "selectors": [{"auxTypes": ["sf"]}],
                "bridgePort": {"type": "access", "logicalBridges": [BRIDGES + "green"]},
            },
        ],
    }


def simulated_vsp_config(root: Path) -> dict[str, Any]:
    """DPU side against a vendor plugin: VLAN 10 VFs on both PFs, and a network-function pool
    whose containers take two VFs each."""
    return {
        "apiVersion": "xpu-bridge/v1",
        "mode": "dpu",
        "hostAgent": {
            "api": DPU_VENDOR_PLUGIN,
            "endpoint": f"unix://{root}/vendor-plugin.sock",
            "attachTimeoutSeconds": 5,
            "heartbeatSeconds": 0.5,
        },
        "release": {"intervalSeconds": 0.5, "graceSeconds": 1, "holdoffSeconds": 1},
        "resourceList": [
            {
                "resourceName": "red",
                "selectors": [{"pfNames": ["ens1f0", "ens1f1#0-3"]}],
                "bridgePort": {"vlan": 10},
            },
            {
                "resourceName": "nf",
                "networkFunction": True,
                "selectors": [{"pfNames": ["ens1f1#4-7"]}],
                "bridgePort": {"vlan": 20},
            },
        ],
    }


def node_resources(api: AgentApi) -> list[str]:
    """The pools the node's config offers."""
    return [RED, NF] if api == DPU_VENDOR_PLUGIN else [RED, BLUE, GREEN]


def write_node_files(layout: NodeLayout, api: AgentApi) -> list[str]:
    """The fake sysfs and the config (release hook included), each unless it exists; returns
    what was written, for the caller to say."""
    written = []
    if not layout.sysfs_root.exists():
        build_node(layout.sysfs_root, pfs=2, vfs_per_pf=8, sfs_per_pf=2)
        written.append(f"fake sysfs {layout.sysfs_root} ({NODE_SHAPE})")
    if not layout.config.exists():
        vendor = api == DPU_VENDOR_PLUGIN
        raw = simulated_vsp_config(layout.root) if vendor else simulated_config(layout.root)
        raw["release"]["hookSocket"] = str(layout.hook_socket)
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.config.write_text(
            "# The simulated node's config: its pools, host agent and release hook.\n"
            + yaml.safe_dump(raw, sort_keys=False)
        )
        written.append(f"config {layout.config} (host agent unix://{layout.agent_socket(vendor)})")
    return written


Agent = SimHostAgent | SimVendorPlugin


async def start_agent(layout: NodeLayout, api: AgentApi) -> Agent:
    """The xPU side of the node, on the socket the config names."""
    vendor = api == DPU_VENDOR_PLUGIN
    target = f"unix://{layout.agent_socket(vendor)}"
    if vendor:
        plugin = SimVendorPlugin(interfaces=VSP_INTERFACES)
        await plugin.start(target)
        return plugin
    agent = SimHostAgent([BRIDGES + n for n in BRIDGE_NAMES], up_delay=0.05, delete_delay=0.05)
    await agent.start(target)
    return agent


@dataclass
class SimulatedNode:
    """The parts, started in the order a real node has them: xPU agent, kubelet, daemon. The
    daemon serves metrics on a free loopback port and the release hook; the kubelet takes
    `xpu-bridge sim-kubelet` commands on its control socket."""

    layout: NodeLayout
    agent: Agent
    kubelet: SimKubelet
    control: ControlServer
    daemon: Daemon
    deleted: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def start(cls, root: Path, api: AgentApi = "opi-evpn-bridge") -> SimulatedNode:
        layout = NodeLayout(root)
        write_node_files(layout, api)
        agent = await start_agent(layout, api)
        kubelet = SimKubelet(layout.kubelet_dir, layout.pod_resources_socket)
        control = ControlServer(kubelet, layout.control_socket)
        try:
            await kubelet.start()
            await control.start()
            options = DaemonOptions(
                config=load_config(layout.config),
                config_path=layout.config,  # edit it while simulate runs: the daemon reloads
                kubelet_dir=layout.kubelet_dir,
                pod_resources_socket=layout.pod_resources_socket,
                sysfs_root=layout.sysfs_root,
                devinfo_dir=layout.devinfo_dir,
                metrics_address="127.0.0.1:0",
            )
            daemon = await Daemon.create(options)
        except BaseException:
            await control.stop()
            await kubelet.stop()
            await agent.stop()
            raise
        node = cls(layout, agent, kubelet, control, daemon)
        try:
            await daemon.start()
            for resource in node_resources(api):
                await kubelet.wait_registered(resource, timeout=20)
                await kubelet.wait_for_devices(resource, timeout=20)
        except BaseException:
            await node.stop()
            raise
        return node

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def metrics_address(self) -> str:
        ops = self.daemon.ops
        if ops is None:
            raise RuntimeError("the simulated daemon serves no metrics address")
        return f"{ops.host}:{ops.port}"

    async def stop(self) -> None:
        await self.daemon.stop()
        await self.control.stop()
        await self.kubelet.stop()
        await self.agent.stop()

    async def port_states(self) -> dict[str, str]:
        """Port ID (or name) -> oper status, as the agent answers (the vendor plugin's List is
        empty, so its own record stands in)."""
        if isinstance(self.agent, SimVendorPlugin):
            return {name: "UP" for name in self.agent.ports}
        client = BridgePortClient(self.daemon.config.host_agent)
        try:
            return {p.port_id: p.oper.name for p in await client.list_ports()}
        finally:
            await client.close()
