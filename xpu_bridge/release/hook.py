"""The release hook's decision: free one device's port now, unless a container holds it."""

from __future__ import annotations

from dataclasses import dataclass

from xpu_bridge.hostagent.ports import OperStatus
from xpu_bridge.kubelet.pod_resources import PodResourcesUnavailable
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.release.gate import ReleaseGate
from xpu_bridge.release.held import HeldPortMap
from xpu_bridge.release.owned import OwnedPorts
from xpu_bridge.release.releaser import PortReleaser
from xpu_bridge.release.sweep import assumed_port


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: bool
    message: str
    port: str | None = None


class ReleaseHook:
    """What a CNI's DEL asks for. The same guards as a pass apply, minus the two-pass wait."""

    def __init__(
        self,
        pools: PoolSet,
        leases: DeviceLeases,
        held: HeldPortMap,
        owned: OwnedPorts,
        gate: ReleaseGate,
        releaser: PortReleaser,
    ) -> None:
        self._pools = pools
        self._leases = leases
        self._held = held
        self._owned = owned
        self._gate = gate
        self._releaser = releaser

    async def release_now(self, device_id: str) -> ReleaseResult:
        owner = self._pools.find(device_id)
        if owner is None:
            return ReleaseResult(False, f"device {device_id} is not in any pool of this node")
        too_recent = ReleaseResult(
            False,
            f"device {device_id} was attached less than {self._leases.grace_seconds:g}s ago "
            "(release.graceSeconds); the reconciler will release it when no container holds it",
        )
        if self._leases.recently_attached(device_id):
            return too_recent
        if self._releaser.spares(owner.entry.spec.port_id):
            return ReleaseResult(
                False,
                f"device {device_id} is prewarmed (bridgePort.prewarm): no container holds it, "
                "and its port stays attached for the next pod",
            )
        holdoff = self._gate.holdoff_reason(self._leases.now())
        if holdoff is not None:
            return ReleaseResult(False, f"device {device_id}: not now: {holdoff}")
        try:
            held = await self._held.read()
        except PodResourcesUnavailable as error:
            return ReleaseResult(False, f"device {device_id}: cannot check holders: {error}")
        holder = held.holder(owner.resource, device_id)
        if holder is not None:
            return ReleaseResult(False, f"device {device_id} is held by {holder}")
        owned = await self._owned.refresh()
        if owned is None:
            return ReleaseResult(False, f"device {device_id}: host agent unreachable")
        port = owned.get(owner.entry.spec.port_id)
        if port is None and not self._owned.agent.capabilities.lists_ports:
            port = assumed_port(owner.entry.spec)  # we cannot know: Delete by name is harmless
        if port is None:
            return ReleaseResult(True, f"device {device_id} has no port on the xPU")
        if port.oper is OperStatus.TO_BE_DELETED:
            return ReleaseResult(True, f"port {port.name} is already being deleted", port.name)
        async with self._leases.release_lock(device_id):
            if self._leases.recently_attached(device_id):
                return too_recent  # an Allocate took the device while we checked
            if not await self._releaser.release(port, owner, "hook"):
                return ReleaseResult(False, f"device {device_id}: deleting {port.name} failed")
        return ReleaseResult(True, f"released port {port.name} of device {device_id}", port.name)
