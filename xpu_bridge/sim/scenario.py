"""`xpu-bridge simulate`: a whole simulated node, a few pods, and a table of what they got.

The node's parts are in node.py, the table in table.py, and the operator commands printed for
`--duration N` in operator.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from xpu_bridge.config import DPU_VENDOR_PLUGIN, AgentApi
from xpu_bridge.sim.kubelet import AdmissionError, Assignment, Container
from xpu_bridge.sim.node import (
    BLUE,
    BRIDGES,
    GREEN,
    NF,
    NODE_SHAPE,
    RED,
    VSP_INTERFACES,
    SimulatedNode,
    simulated_config,
    simulated_vsp_config,
)
from xpu_bridge.sim.operator import program, simulate_commands
from xpu_bridge.sim.table import render, rows
from xpu_bridge.sim.vendor_plugin import SimVendorPlugin

__all__ = [
    "BLUE",
    "BRIDGES",
    "GREEN",
    "NF",
    "RED",
    "VSP_INTERFACES",
    "SimulatedNode",
    "run_pods",
    "simulate",
    "simulated_config",
    "simulated_vsp_config",
]


@dataclass
class PodScript:
    """Admits pods and says how it went; `surprises` counts outcomes the script did not plan."""

    node: SimulatedNode
    say: Callable[[str], None]
    history: list[Assignment] = field(default_factory=list)
    surprises: int = 0

    async def admit(self, name: str, **containers: Any) -> None:
        started = time.monotonic()
        try:
            got = await self.node.kubelet.admit_pod(name, **containers)
        except AdmissionError as error:
            self.surprises += 1
            self.say(f"pod {name}: admission failed: {error.message}")
            return
        self.history.extend(got)
        self.say(f"pod {name}: admitted in {(time.monotonic() - started) * 1000:.0f} ms")

    async def refuse(self, name: str, resource: str, count: int) -> None:
        """A pod that asks for more devices than the pool has: the kubelet must refuse it."""
        pool = len(self.node.kubelet.devices(resource))
        try:
            got = await self.node.kubelet.admit_pod(
                name, containers=[Container("app", {resource: count})]
            )
        except AdmissionError as error:
            self.say(
                f"pod {name}: refused as expected: asks for {count} {resource}, the pool has "
                f"{pool}\n  kubelet: {error.message}"
            )
            return
        self.surprises += 1
        self.history.extend(got)
        self.say(f"pod {name}: admitted, though it asks for {count} {resource} of {pool}")


async def run_pods(node: SimulatedNode, say: Callable[[str], None]) -> PodScript:
    """Admit and delete a few pods the way a busy node would see them."""
    kubelet = node.kubelet
    script = PodScript(node, say)
    await script.admit("web-1", containers=[Container("nginx", {RED: 1})])
    await script.admit("web-2", containers=[Container("nginx", {RED: 2})])
    if isinstance(node.agent, SimVendorPlugin):
        await script.admit("fw-1", containers=[Container("firewall", {NF: 2})])
        await script.admit("fw-2", containers=[Container("firewall", {NF: 2})])
        for call in node.agent.nf_calls:
            say(f"network function: {call.method}(input={call.input}, output={call.output})")
    else:
        await script.admit(
            "db-0",
            init_containers=[Container("init-net", {BLUE: 1})],
            containers=[Container("postgres", {BLUE: 1})],
        )
        await script.admit("edge-1", containers=[Container("envoy", {GREEN: 1})])
    await script.refuse("greedy", RED, 20)
    kubelet.delete_pod("web-1")
    say("pod web-1: deleted")
    node.deleted["web-1"] = await wait_released(node, script.history, "web-1", say)
    if isinstance(node.agent, SimVendorPlugin):
        calls = len(node.agent.nf_calls)
        kubelet.delete_pod("fw-1")
        say("pod fw-1: deleted")
        node.deleted["fw-1"] = await wait_released(node, script.history, "fw-1", say)
        for call in node.agent.nf_calls[calls:]:
            say(f"network function: {call.method}(input={call.input}, output={call.output})")
    await script.admit("web-3", containers=[Container("nginx", {RED: 1})])
    return script


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


async def simulate(
    duration: float,
    out: TextIO,
    stop: asyncio.Event | None = None,
    keep: bool = False,
    api: AgentApi = "opi-evpn-bridge",
) -> int:
    """Build, run the pods, print the table; then keep serving for `duration` seconds, with
    the commands to try against the node. 1 when a pod did not fare as the script expects."""
    root = Path(tempfile.mkdtemp(prefix="xpu-sim-", dir="/tmp"))

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    agent = "vendor plugin (DPU side)" if api == DPU_VENDOR_PLUGIN else "host agent"
    say(f"simulated node in {root}: {NODE_SHAPE}; {agent}, kubelet and xpu-bridge")
    try:
        node = await SimulatedNode.start(root, api)
        try:
            script = await run_pods(node, say)
            say()
            say(render(rows(node, script.history, await node.port_states())))
            say()
            if duration > 0:
                await _serve(node, duration, keep, stop or asyncio.Event(), say)
            else:
                say(
                    f"`{program()} simulate --duration 600` keeps the node up and prints the "
                    "commands to try against it."
                )
        finally:
            await node.stop()
        if keep:
            say(f"kept {root}: {_contents(root)}")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if script.surprises else 0


async def _serve(
    node: SimulatedNode,
    duration: float,
    keep: bool,
    stop: asyncio.Event,
    say: Callable[[str], None],
) -> None:
    (held, *_) = node.kubelet.assignments(pod="web-2")
    for line in simulate_commands(
        node.layout, node.metrics_address, (held.pod, held.device_ids[0]), RED, duration, keep
    ):
        say(line)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


def _contents(root: Path) -> str:
    """What a kept directory holds: each entry; a directory's files by name when few."""
    parts = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            parts.append(entry.name)
            continue
        files = sorted(p.name for p in entry.rglob("*") if not p.is_dir())
        listed = ", ".join(files) if len(files) <= 2 else f"{len(files)} files"
        parts.append(f"{entry.name}/ ({listed or 'empty'})")
    return "; ".join(parts)
