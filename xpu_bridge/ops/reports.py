"""Operator reports: `inventory` (what sysfs shows, where it goes) and `status` (a live daemon)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import cast

from xpu_bridge.config import Config
from xpu_bridge.hostagent.port_names import PortNaming, port_naming
from xpu_bridge.node.inventory import Device, discover
from xpu_bridge.node.pool import function_ref
from xpu_bridge.node.selection import PoolMatcher, assign
from xpu_bridge.node.vf_creation import VfPlan, plan_vfs
from xpu_bridge.ops.state import DebugState, DeviceState

FETCH_TIMEOUT = 5.0


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _pool_of(matcher: PoolMatcher | None, device: Device) -> tuple[str | None, str]:
    """(pool name or None, the one-line explanation)."""
    if matcher is None:
        return None, "no --config given"
    matching = matcher.matching(device)
    return (matching[0].name if matching else None), matcher.explain(device)


def inventory_report(sysfs_root: Path, config: Config | None, as_json: bool) -> str:
    found = discover(sysfs_root)
    matcher = PoolMatcher(config) if config is not None else None
    naming = (
        port_naming(config, assign(config, found.devices).pf_positions())
        if config is not None
        else None
    )
    entries = [(device, *_pool_of(matcher, device)) for device in found.devices]
    ports = {device.id: _port(naming, device) for device in found.devices}
    plan = plan_vfs(config, found) if config is not None else None
    notes = _notes(plan, naming, found.devices)
    if as_json:
        return json.dumps(
            {
                "devices": [
                    {**asdict(device), "pool": pool, "explanation": why, "port": ports[device.id]}
                    for device, pool, why in entries
                ],
                "problems": list(found.problems),
                "notes": notes,
            },
            indent=2,
        )
    rows = [
        (
            device.id,
            device.kind.upper(),
            device.pci_address,
            device.pf_name or "-",
            device.netdev or "-",
            device.mac or "-",
            device.driver or "-",
            "-" if device.numa_node is None else str(device.numa_node),
            ports[device.id] or "-",
            pool or ("-" if matcher is None else "none: " + why.split(" joins no pool: ", 1)[-1]),
        )
        for device, pool, why in entries
    ]
    header = ("DEVICE", "KIND", "PCI", "PF", "NETDEV", "MAC", "DRIVER", "NUMA", "PORT", "POOL")
    lines = [table(header, rows), f"{len(rows)} function(s) under {sysfs_root}"]
    lines += [f"problem: {problem}" for problem in found.problems]
    lines += notes
    return "\n".join(lines)


def _port(naming: PortNaming | None, device: Device) -> str | None:
    """The port ID (opi-evpn-bridge) or name (a vendor plugin) the device's port would get."""
    if naming is None:
        return None
    try:
        return naming.port_id(function_ref(device))
    except ValueError:
        return None


def _notes(plan: VfPlan | None, naming: PortNaming | None, devices: Sequence[Device]) -> list[str]:
    """What `run` would do or refuse: VF creation (pfs[]) and MACs the backend cannot use."""
    notes = []
    if plan is not None:
        notes += [
            f"vf creation: {change}: would change to {change.wanted}" for change in plan.changes
        ]
        notes += [f"vf creation: {problem}" for problem in plan.problems]
        notes += [f"vf creation: {line}" for line in plan.unchanged]
    if naming is not None:
        for device in devices:
            port = _port(naming, device)
            problem = naming.mac_problem(naming.mac(port or "", device.mac))
            if problem is not None:
                notes.append(f"unusable: device {device.id} {problem}")
    return notes


async def fetch_state(host: str, port: int) -> DebugState:
    """GET /debug/state from a running daemon's metrics address."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), FETCH_TIMEOUT)
    try:
        writer.write(b"GET /debug/state HTTP/1.1\r\nHost: xpu-bridge\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), FETCH_TIMEOUT)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"/debug/state answered {head.splitlines()[0].decode(errors='replace')}")
    state = json.loads(body)
    if not isinstance(state, dict) or "pools" not in state or "hostAgent" not in state:
        raise ValueError("/debug/state is not the state document of an xpu-bridge daemon")
    return cast(DebugState, state)


def _port_state(device: DeviceState) -> str:
    """`UP`, `UP (prewarmed)` for a free device's port kept ahead of demand, or `-`."""
    state = device["portState"] or "-"
    return f"{state} (prewarmed)" if device.get("prewarmed") else state


def status_report(state: DebugState) -> str:
    agent = state["hostAgent"]
    lines = [
        f"host agent {agent['endpoint']}: {'reachable' if agent['reachable'] else 'UNREACHABLE'}",
        "ready" if state["ready"] else f"not ready: {state['notReadyReason']}",
        f"kubelet restarts seen: {state['kubeletRestarts']}",
    ]
    for name, pool in sorted(state["pools"].items()):
        devices = pool["devices"]
        attached = sum(1 for d in devices if d["portState"])
        lines.append("")
        lines.append(
            f"{name}: {'registered' if pool['registered'] else 'NOT registered'}, "
            f"{len(devices)} device(s), {attached} with a port"
        )
        rows = [(d["id"], d["pf"] or "-", d["health"], d["port"], _port_state(d)) for d in devices]
        lines.append(table(("DEVICE", "PF", "HEALTH", "XPU PORT", "PORT STATE"), rows))
    return "\n".join(lines)
