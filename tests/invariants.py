"""What must hold once a faulted node has converged, on either host-agent backend: every owned
port belongs to a held device, every held device has an UP port of its spec and its
device-info file, no device is in two live containers, and no held device's port was ever
deleted. Computed from the simulators and PodResources, independently of the daemon."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from simnode import Node, VspNode

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as opi
from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc
from xpu_bridge.hostagent.port_ids import parse_port_id
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.pool import port_spec
from xpu_bridge.node.selection import assign
from xpu_bridge.sim.kubelet import Assignment
from xpu_bridge.sim.polling import wait_until

Key = tuple[str, str]
"""(full resource name, device ID)"""

VSP_NAME = re.compile(r"^host\d+-\d+$")
"""The vendor-plugin port names the default template `host{pf}-{vf}` gives."""
PTYPES = {"access": opi.BRIDGE_PORT_TYPE_ACCESS, "trunk": opi.BRIDGE_PORT_TYPE_TRUNK}


@dataclass(frozen=True)
class ExpectedPort:
    """The port a held device must have on the agent: its key there, MAC, type, bridges."""

    name: str
    mac: bytes
    ptype: int
    logical_bridges: tuple[str, ...]


def expected_ports(node: Node) -> dict[Key, ExpectedPort]:
    """Each pooled device's port, computed from sysfs and the config as the test reads them:
    opi-evpn-bridge ports by their ID; vendor-plugin ports by `host<pf position>-<vf index>`."""
    config = node.config
    inventory = discover(node.root / "sys")
    pools = assign(config, inventory.devices).pools
    vsp = isinstance(node, VspNode)
    pf_order = sorted({pf.address for pf in node.sysfs.pfs})
    vf_index = {
        vf: (pf_order.index(pf.address), index)
        for pf in node.sysfs.pfs
        for index, vf in node.sysfs.vfs(pf).items()
    }
    ports: dict[Key, ExpectedPort] = {}
    for resource in config.resource_list:
        name = config.full_resource_name(resource)
        for device in pools.get(name, ()):
            bridges = tuple(resource.bridge_port.on_the_wire)
            ptype = PTYPES[resource.bridge_port.type]
            if vsp:
                position, index = vf_index[device.id]
                mac = bytes.fromhex(device.mac.replace(":", "")) if device.mac else b""
                ports[(name, device.id)] = ExpectedPort(
                    f"host{position}-{index}", mac, ptype, bridges
                )
            else:
                spec = port_spec(device, resource, config.port_id_prefix)
                ports[(name, device.id)] = ExpectedPort(spec.port_id, spec.mac, ptype, bridges)
    return ports


def owned(node: Node, name: str) -> bool:
    """Whether a port on the agent is one xpu-bridge makes (and so must account for)."""
    if isinstance(node, VspNode):
        return VSP_NAME.match(name) is not None
    return parse_port_id(name) is not None


@dataclass
class Holds:
    """What the kubelet gave to whom and when, as the test saw admissions and deletions."""

    holder: dict[Key, str] = field(default_factory=dict)
    devices_of: dict[str, set[Key]] = field(default_factory=dict)
    intervals: dict[Key, list[tuple[float, float]]] = field(default_factory=dict)
    since: dict[Key, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def admitted(self, pod: str, assignments: list[Assignment]) -> set[Key]:
        """Record a pod's devices; a device another live pod holds is a violation."""
        now = time.monotonic()
        keys = {(a.resource_name, d) for a in assignments for d in a.device_ids}
        for key in keys:
            other = self.holder.get(key)
            if other is not None and other != pod:
                self.violations.append(f"{key} given to {pod} while {other} holds it")
            self.holder[key] = pod
            self.since.setdefault(key, now)
        self.devices_of.setdefault(pod, set()).update(keys)
        return keys

    def deleted(self, pod: str) -> None:
        now = time.monotonic()
        for key in self.devices_of.pop(pod, set()):
            if self.holder.get(key) == pod:
                del self.holder[key]
                self.intervals.setdefault(key, []).append((self.since.pop(key), now))

    @property
    def live_pods(self) -> list[str]:
        return sorted(self.devices_of)

    def held_at(self, key: Key, at: float) -> bool:
        if key in self.since and at >= self.since[key]:
            return True
        return any(start <= at <= end for start, end in self.intervals.get(key, ()))


async def pod_resources_held(node: Node) -> set[Key]:
    """A real PodResources List over gRPC, as the daemon reads it, for our resources."""
    ours = set(node.resources)
    async with grpc.aio.insecure_channel(f"unix://{node.root / 'pr.sock'}") as channel:
        reply = await pr_grpc.PodResourcesListerStub(channel).List(
            pr.ListPodResourcesRequest(), timeout=5
        )
    return {
        (devices.resource_name, device_id)
        for pod in reply.pod_resources
        for container in pod.containers
        for devices in container.devices
        if devices.resource_name in ours
        for device_id in devices.device_ids
    }


def devinfo_path(node: Node, key: Key) -> Path:
    resource, device_id = key
    return node.devinfo_dir / f"{resource.replace('/', '-')}-{device_id}-device.json"


async def problems(node: Node, holds: Holds) -> list[str]:
    """Every invariant that does not hold now; empty once the node has converged."""
    found = list(holds.violations)
    held = await pod_resources_held(node)
    if held != set(holds.holder):
        found.append(
            f"PodResources holds {sorted(held - set(holds.holder))} the test never saw given "
            f"and misses {sorted(set(holds.holder) - held)}"
        )
    expected = expected_ports(node)
    by_name = {port.name: key for key, port in expected.items()}
    ports = node.agent.ports
    for name in sorted(ports):
        if owned(node, name) and by_name.get(name) not in holds.holder:
            found.append(f"owned port {name} ({by_name.get(name)}) belongs to no held device")
    vsp = isinstance(node, VspNode)
    for key in sorted(holds.holder):
        want = expected[key]
        port = ports.get(want.name)
        if port is None:
            found.append(f"held {key} has no port {want.name}")
            continue
        if port.status.oper_status != opi.BP_OPER_STATUS_UP:
            status = opi.BPOperStatus.Name(port.status.oper_status)
            found.append(f"held {key}: port {want.name} is {status}")
        spec = port.spec
        wrong_type = not vsp and spec.ptype != want.ptype
        if (
            bytes(spec.mac_address) != want.mac
            or wrong_type
            or sorted(spec.logical_bridges) != sorted(want.logical_bridges)
        ):
            found.append(f"held {key}: port {want.name} has spec {spec}".replace("\n", " "))
        info = devinfo_path(node, key)
        if f'"{key[1]}"' not in (info.read_text() if info.exists() else ""):
            found.append(f"held {key}: no device-info file naming it at {info}")
    for at, name in node.agent.deletions:
        key = by_name.get(name)
        if key is not None and holds.held_at(key, at):
            found.append(f"port {name} of {key} was deleted while a pod held it")
    return found


async def converge(node: Node, holds: Holds, timeout: float = 60.0) -> float:
    """Wait until every invariant holds; return how long it took. On timeout, fail with
    the problems that remain."""
    start = time.monotonic()
    last: list[str] = []

    async def settled() -> bool:
        nonlocal last
        try:
            last = await problems(node, holds)
        except grpc.aio.AioRpcError as error:  # the kubelet may be restarting
            last = [f"PodResources: {error.code().name}"]
        return not last

    try:
        await wait_until(settled, timeout, 0.05)
    except TimeoutError:
        raise AssertionError(f"not converged after {timeout:.0f} s:\n" + "\n".join(last)) from None
    return time.monotonic() - start
