"""The daemon's status as operators see it: liveness, readiness, metrics gauges, /debug/state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from xpu_bridge.hostagent.ports import PortState
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.pool import PoolDevice
from xpu_bridge.node.pool_set import PoolSet
from xpu_bridge.node.prewarm import PrewarmedPorts
from xpu_bridge.ops.metrics import DeviceCounts, StateSnapshot
from xpu_bridge.ops.state import DebugState, DeviceState, PoolState


class RegistrationView(Protocol):
    @property
    def registered(self) -> set[str]: ...

    @property
    def kubelet_restarts(self) -> int: ...


class ReleaseCounts(Protocol):
    @property
    def releases(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def held_back(self) -> Mapping[str, int]: ...

    @property
    def repairs(self) -> Mapping[str, int]: ...


class AgentView(Protocol):
    """The host agent as status needs it."""

    @property
    def endpoint(self) -> str: ...

    def up(self) -> bool: ...

    def not_ready(self) -> str | None:
        """Why the agent keeps the node from getting pods (down, refusing ports), or None."""
        ...

    def failing_creates(self) -> int: ...


class NodeStatus:
    """Reads the running parts on demand; owns nothing but the `started` flag."""

    def __init__(
        self,
        pools: PoolSet,
        leases: DeviceLeases,
        owned: Callable[[], Mapping[str, PortState]],
        registration: RegistrationView,
        releases: ReleaseCounts,
        agent: AgentView,
        broken: Callable[[], str | None],
        prewarmed: PrewarmedPorts | None = None,
    ) -> None:
        self._pools = pools
        self._leases = leases
        self._owned = owned
        self._registration = registration
        self._releases = releases
        self._agent = agent
        self._broken = broken
        self._prewarmed = prewarmed or PrewarmedPorts()
        self.started = False

    def not_live(self) -> str | None:
        """Why the kubelet should restart us (a loop died), or None."""
        return self._broken()

    def not_ready(self) -> str | None:
        """Why the node should not get pods yet, or None when it may."""
        if not self.started:
            return "starting: waiting for the host agent and the first registration"
        missing = sorted(set(self._pools.names()) - self._registration.registered)
        if missing:
            return f"not registered with the kubelet: {', '.join(missing)}"
        problem = self._agent.not_ready()
        if problem is not None:
            return f"host agent {self._agent.endpoint} {problem}"
        return None

    def _attached(self, entry: PoolDevice, owned: Mapping[str, PortState]) -> bool:
        """Its port exists on the xPU (last pass) or an Allocate attached it since; a
        prewarmed port is not attached to anyone (the device is free)."""
        if self._prewarmed.spares(entry.spec.port_id):
            return False
        return entry.spec.port_id in owned or self._leases.was_attached(entry.id)

    def snapshot(self) -> StateSnapshot:
        owned = self._owned()
        counts = []
        for pool in self._pools:
            unhealthy = sum(1 for e in pool.devices() if pool.unhealthy_reason(e.id))
            allocated = sum(
                1
                for e in pool.devices()
                if self._attached(e, owned) and not pool.unhealthy_reason(e.id)
            )
            free = len(pool) - unhealthy - allocated
            counts.append(DeviceCounts(pool.resource_name, free, allocated, unhealthy))
        return StateSnapshot(
            devices=counts,
            host_agent_up=self._agent.up(),
            releases=dict(self._releases.releases),
            held_back=dict(self._releases.held_back),
            repairs=dict(self._releases.repairs),
            failing_creates=self._agent.failing_creates(),
            ready=self.not_ready() is None,
            prewarmed={pool.resource_name: 0 for pool in self._pools} | self._prewarmed.counts(),
            prewarm_taken={pool.resource_name: 0 for pool in self._pools}
            | dict(self._prewarmed.taken),
        )

    def debug_state(self) -> DebugState:
        """Pools, devices, their ports and who is registered: for `xpu-bridge status`."""
        owned = self._owned()
        registered = self._registration.registered
        not_ready = self.not_ready()
        return DebugState(
            hostAgent={"endpoint": self._agent.endpoint, "reachable": self._agent.up()},
            kubeletRestarts=self._registration.kubelet_restarts,
            ready=not_ready is None,
            notReadyReason=not_ready,
            pools={
                pool.resource_name: PoolState(
                    registered=pool.resource_name in registered,
                    devices=[
                        _device_state(pool.unhealthy_reason(e.id), e, owned, pool.prewarmed)
                        for e in pool.devices()
                    ],
                )
                for pool in self._pools
            },
        )


def _device_state(
    unhealthy: str | None,
    entry: PoolDevice,
    owned: Mapping[str, PortState],
    prewarmed: frozenset[str] = frozenset(),
) -> DeviceState:
    port = owned.get(entry.spec.port_id)
    state = DeviceState(
        id=entry.id,
        pci=entry.device.pci_address,
        pf=entry.device.pf_name,
        health=unhealthy or "Healthy",
        port=entry.spec.port_id,
        portState=port.oper.name if port is not None else None,
    )
    if entry.id in prewarmed:
        state["prewarmed"] = True
    return state
