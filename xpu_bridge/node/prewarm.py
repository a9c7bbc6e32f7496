"""Prewarmed ports: free devices whose bridge port is attached and UP ahead of demand.

This module holds the state and how Allocate takes from it; release/prewarm.py keeps it
filled (replenish, surplus, ports that vanish, restart adoption). A prewarmed port belongs
to no container: the reconciler spares it. Once an Allocate takes it, it is the pod's like
any other port and is released when no container holds it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from xpu_bridge.hostagent.ports import (
    Attachment,
    HostAgent,
    OperStatus,
    PortError,
    PortSpec,
    PortState,
)
from xpu_bridge.node.pool import DevicePool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrewarmedPort:
    """One prewarmed device: its pool, the spec its port was made with, the port as the
    agent answered it, and when it was ready (a port listing older than that cannot show
    it). `suspect`: the agent may have lost it (it restarted), so it is ensured again."""

    pool: DevicePool
    device_id: str
    spec: PortSpec
    port: PortState
    ready_at: float
    suspect: bool = False

    @property
    def resource(self) -> str:
        return self.pool.resource_name


class PrewarmedPorts:
    """Prewarmed ports by port ID, those being made (`warming`), and how many Allocates each
    resource served from them. Every change is mirrored into the pools' `prewarmed` marks,
    which the preferred pick offers first."""

    def __init__(self) -> None:
        self._ready: dict[str, PrewarmedPort] = {}
        self._warming: dict[str, str] = {}
        self.taken: Counter[str] = Counter()
        """resource -> Allocates that found their port prewarmed."""
        self.on_taken: Callable[[], None] = lambda: None
        """Told after an Allocate took a port (the keeper replenishes)."""

    def ready(self) -> list[PrewarmedPort]:
        return list(self._ready.values())

    def get(self, port_id: str) -> PrewarmedPort | None:
        return self._ready.get(port_id)

    def of(self, pool: DevicePool) -> list[PrewarmedPort]:
        return [record for record in self._ready.values() if record.pool is pool]

    def warming_in(self, pool: DevicePool) -> int:
        return sum(1 for device_id in self._warming.values() if pool.get(device_id) is not None)

    def counts(self) -> dict[str, int]:
        """Prewarmed ports per resource."""
        return dict(Counter(record.resource for record in self._ready.values()))

    def spares(self, port_id: str) -> bool:
        """Whether the port is prewarmed or being made so: no release pass may delete it."""
        return port_id in self._ready or port_id in self._warming

    def add(self, record: PrewarmedPort) -> None:
        self._ready[record.spec.port_id] = record
        self._mark(record.pool)

    def remove(self, port_id: str) -> PrewarmedPort | None:
        record = self._ready.pop(port_id, None)
        if record is not None:
            self._mark(record.pool)
        return record

    def start_warming(self, port_id: str, device_id: str) -> None:
        self._warming[port_id] = device_id

    def done_warming(self, port_id: str) -> None:
        self._warming.pop(port_id, None)

    def suspect_all(self) -> None:
        """The agent may have lost every port (it restarted and cannot list)."""
        for port_id, record in self._ready.items():
            self._ready[port_id] = PrewarmedPort(
                record.pool, record.device_id, record.spec, record.port, record.ready_at, True
            )

    def take(self, spec: PortSpec) -> PortState | None:
        """What Allocate asks first: the device's prewarmed port, which from now on is the
        Allocate's, when it was made with exactly `spec` (the pool's current one); a port of
        another spec is given up, and the Allocate makes the port anew."""
        record = self._ready.get(spec.port_id)
        if record is None:
            return None
        self.remove(spec.port_id)
        self.on_taken()
        if record.spec != spec or record.suspect:
            log.info(
                "device %s: its prewarmed port %s is not as the pool now wants it; attaching anew",
                record.device_id,
                record.port.name,
            )
            return None
        self.taken[record.resource] += 1
        return record.port

    def _mark(self, pool: DevicePool) -> None:
        pool.prewarmed = frozenset(r.device_id for r in self._ready.values() if r.pool is pool)


class PrewarmedAttacher:
    """The PortAttacher Allocate uses: a prewarmed port is handed out without a Create or a
    wait for UP. An agent that reports real port state (opi-evpn-bridge) is asked once that
    the port is still there and UP, so an Allocate never answers for a port the xPU lost since
    the last pass; a vendor plugin's Get answers a stub for any name, so it is not asked.
    Every other device, and a prewarmed one that is gone, goes to the agent as usual."""

    def __init__(self, agent: HostAgent, prewarmed: PrewarmedPorts) -> None:
        self._agent = agent
        self._prewarmed = prewarmed

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        port = self._prewarmed.take(spec)
        if port is not None and self._agent.capabilities.reports_status:
            port = await self._confirmed(port, spec)
        if port is not None:
            return Attachment(port, created=False)
        return await self._agent.ensure_port(spec)

    async def _confirmed(self, port: PortState, spec: PortSpec) -> PortState | None:
        try:
            now = await self._agent.get_port(port.name)
        except PortError:
            return None  # ensure_port retries within the attach budget, or says why not
        if now is None or now.oper is not OperStatus.UP or not now.matches(spec):
            log.warning(
                "prewarmed port %s is %s on the agent; attaching anew",
                port.name,
                "gone" if now is None else now.oper.name,
            )
            return None
        return now

    async def delete_port(self, name: str) -> None:
        await self._agent.delete_port(name)
