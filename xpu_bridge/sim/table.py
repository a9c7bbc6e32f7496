"""The table `xpu-bridge simulate` prints: each container's devices, MACs, xPU ports and state."""

from __future__ import annotations

import json
from dataclasses import dataclass

from xpu_bridge.node.pool import env_name
from xpu_bridge.sim.kubelet import Assignment
from xpu_bridge.sim.node import SimulatedNode

COLUMNS = ("POD", "CONTAINER", "RESOURCE", "DEVICE", "PCI", "MAC", "XPU PORT", "STATE")


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
