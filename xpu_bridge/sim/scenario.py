"""`xpu-bridge simulate`: a whole simulated node, a few pods, and a table of what they got."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from xpu_bridge.config import DPU_VENDOR_PLUGIN, AgentApi, parse_config
from xpu_bridge.daemon import Daemon, DaemonOptions
from xpu_bridge.hostagent.opi_evpn import BridgePortClient
from xpu_bridge.node.pool import env_name
from xpu_bridge.sim.host_agent import SimHostAgent
from xpu_bridge.sim.kubelet import AdmissionError, Assignment, Container, SimKubelet
from xpu_bridge.sim.sysfs import build_node
from xpu_bridge.sim.vendor_plugin import SimVendorPlugin

BRIDGES = "//network.opiproject.org/bridges/"
RED, BLUE, GREEN, NF = "opi.io/red", "opi.io/blue", "opi.io/green", "opi.io/nf"
VSP_INTERFACES = 16
COLUMNS = ("POD", "CONTAINER", "RESOURCE", "DEVICE", "PCI", "MAC", "XPU PORT", "STATE")


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


@dataclass(frozen=True, slots=True)
class Row:
    pod: str
    container: str
    resource: str
    device: str
    pci: str
    mac: str
    port: str
    state: str


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


Agent = SimHostAgent | SimVendorPlugin


async def start_agent(root: Path, api: AgentApi) -> tuple[Agent, dict[str, Any], list[str]]:
    """The xPU side of the node: its agent, the config that matches, the pools it serves."""
    if api == DPU_VENDOR_PLUGIN:
        plugin = SimVendorPlugin(interfaces=VSP_INTERFACES)
        await plugin.start(f"unix://{root}/vendor-plugin.sock")
        return plugin, simulated_vsp_config(root), [RED, NF]
    agent = SimHostAgent(
        [BRIDGES + n for n in ("red", "blue-a", "blue-b", "green")],
        up_delay=0.05,
        delete_delay=0.05,
    )
    await agent.start(f"unix://{root}/agent.sock")
    return agent, simulated_config(root), [RED, BLUE, GREEN]


@dataclass
class SimulatedNode:
    """The parts, started in the order a real node has them: xPU agent, kubelet, daemon."""

    root: Path
    agent: Agent
    kubelet: SimKubelet
    daemon: Daemon
    deleted: dict[str, str]

    @classmethod
    async def start(cls, root: Path, api: AgentApi = "opi-evpn-bridge") -> SimulatedNode:
        build_node(root / "sys", pfs=2, vfs_per_pf=8, sfs_per_pf=2)
        agent, raw, resources = await start_agent(root, api)
        kubelet = SimKubelet(root / "device-plugins", root / "pod-resources.sock")
        await kubelet.start()
        options = DaemonOptions(
            config=parse_config(raw),
            kubelet_dir=root / "device-plugins",
            pod_resources_socket=root / "pod-resources.sock",
            sysfs_root=root / "sys",
            devinfo_dir=root / "devinfo",
        )
        daemon = await Daemon.create(options)
        await daemon.start()
        for resource in resources:
            await kubelet.wait_registered(resource, timeout=20)
            await kubelet.wait_for_devices(resource, timeout=20)
        return cls(root, agent, kubelet, daemon, {})

    async def stop(self) -> None:
        await self.daemon.stop()
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


async def run_pods(node: SimulatedNode, say: Callable[[str], None]) -> list[Assignment]:
    """Admit and delete a few pods the way a busy node would see them."""
    kubelet = node.kubelet
    history: list[Assignment] = []

    async def admit(name: str, **containers: Any) -> None:
        started = time.monotonic()
        try:
            got = await kubelet.admit_pod(name, **containers)
        except AdmissionError as error:
            say(f"pod {name}: admission failed: {error.message}")
            return
        history.extend(got)
        say(f"pod {name}: admitted in {(time.monotonic() - started) * 1000:.0f} ms")

    await admit("web-1", containers=[Container("nginx", {RED: 1})])
    await admit("web-2", containers=[Container("nginx", {RED: 2})])
    if isinstance(node.agent, SimVendorPlugin):
        await admit("fw-1", containers=[Container("firewall", {NF: 2})])
        await admit("fw-2", containers=[Container("firewall", {NF: 2})])
        for call in node.agent.nf_calls:
            say(f"network function: {call.method}(input={call.input}, output={call.output})")
    else:
        await admit(
            "db-0",
            init_containers=[Container("init-net", {BLUE: 1})],
            containers=[Container("postgres", {BLUE: 1})],
        )
        await admit("edge-1", containers=[Container("envoy", {GREEN: 1})])
    await admit("greedy", containers=[Container("app", {RED: 20})])
    kubelet.delete_pod("web-1")
    say("pod web-1: deleted")
    node.deleted["web-1"] = await wait_released(node, history, "web-1", say)
    if isinstance(node.agent, SimVendorPlugin):
        calls = len(node.agent.nf_calls)
        kubelet.delete_pod("fw-1")
        say("pod fw-1: deleted")
        node.deleted["fw-1"] = await wait_released(node, history, "fw-1", say)
        for call in node.agent.nf_calls[calls:]:
            say(f"network function: {call.method}(input={call.input}, output={call.output})")
    await admit("web-3", containers=[Container("nginx", {RED: 1})])
    return history


async def wait_released(
    node: SimulatedNode, history: list[Assignment], pod: str, say: Callable[[str], None]
) -> str:
    """The kubelet never says a device is free: the reconciler notices and releases the port."""
    ports = {
        owner.entry.spec.port_id
        for item in history
        if item.pod == pod
        for device in item.device_ids
        if (owner := node.daemon.pools.find(device)) is not None
    }
    started = time.monotonic()
    while ports & set(node.agent.ports) and time.monotonic() - started < 15:
        await asyncio.sleep(0.1)
    gone = not ports & set(node.agent.ports)
    verdict = "released" if gone else "still attached"
    say(f"pod {pod}: port(s) {verdict} after {time.monotonic() - started:.1f}s (reconciler)")
    return verdict


def rows(node: SimulatedNode, history: list[Assignment], ports: dict[str, str]) -> list[Row]:
    table = []
    for item in history:
        info = json.loads(item.response.envs[env_name(item.resource_name) + "_INFO"])
        for device in item.device_ids:
            xpu = info[device]["xpu"]
            port_id = xpu["bridgePort"].rsplit("/", 1)[-1]
            state = ports.get(port_id, "released")
            if item.pod in node.deleted:
                state = f"{node.deleted[item.pod]} (pod deleted)"
            table.append(
                Row(
                    item.pod,
                    item.container,
                    item.resource_name,
                    device,
                    _pci(node, item.resource_name, device),
                    xpu["mac"],
                    port_id,
                    state,
                )
            )
    return table


def _pci(node: SimulatedNode, resource: str, device_id: str) -> str:
    owner = node.daemon.pools.find(device_id)
    if owner is None or owner.resource != resource:
        return "?"
    device = owner.entry.device
    return device.pci_address if device.kind == "vf" else f"{device.pf_address} (PF)"


def render(table: list[Row]) -> str:
    cells = [COLUMNS] + [
        (r.pod, r.container, r.resource, r.device, r.pci, r.mac, r.port, r.state) for r in table
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


async def simulate(
    duration: float,
    out: TextIO,
    stop: asyncio.Event | None = None,
    keep: bool = False,
    api: AgentApi = "opi-evpn-bridge",
) -> int:
    """Build, run the pods, print the table; then keep serving for `duration` seconds."""
    root = Path(tempfile.mkdtemp(prefix="xpu-sim-", dir="/tmp"))

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    agent = "vendor plugin (DPU side)" if api == DPU_VENDOR_PLUGIN else "host agent"
    say(f"simulated node in {root}: 2 PFs x 8 VFs, 4 SFs; {agent}, kubelet and xpu-bridge")
    node = await SimulatedNode.start(root, api)
    try:
        history = await run_pods(node, say)
        say("")
        say(render(rows(node, history, await node.port_states())))
        if duration > 0:
            say(f"\nrunning for {duration:g}s (Ctrl-C stops)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((stop or asyncio.Event()).wait(), duration)
    finally:
        await node.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0
