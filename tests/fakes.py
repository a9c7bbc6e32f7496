"""In-memory stand-ins for the reconciler's dependencies: host agent, PodResources, clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

from builders import port_state

from xpu_bridge.hostagent.port_ids import port_id_from_name
from xpu_bridge.hostagent.ports import (
    AgentCapabilities,
    Attachment,
    HostAgent,
    OperStatus,
    PortError,
    PortSpec,
    PortState,
)
from xpu_bridge.kubelet.pod_resources import (
    HeldDevices,
    HeldDeviceSource,
    Holder,
    PodResourcesUnavailable,
)

Hook = Callable[[], Awaitable[None]]


async def settle() -> None:
    """Let background tasks (repairs) run to their end: the fakes never block, so a few
    turns of the event loop finish them; no wall-clock wait."""
    for _ in range(20):
        await asyncio.sleep(0)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeAgent:
    """A host agent holding its ports in a dict keyed by port ID. Delete removes a port at
    once; fail() makes calls raise PortError (by default as an unreachable agent does);
    `on_delete` runs inside a Delete, before the port goes."""

    def __init__(self, attach_timeout: float = 10.0) -> None:
        self.ports: dict[str, PortState] = {}
        self.calls: Counter[str] = Counter()
        self.deleted: list[str] = []
        self.on_delete: Callable[[str], Awaitable[None]] | None = None
        self._attach_timeout = attach_timeout
        self._failing: dict[str, bool] = {}

    def fail(self, *methods: str, unreachable: bool = True) -> None:
        """These methods (every one when none is named) raise PortError until heal()."""
        for method in methods or ("*",):
            self._failing[method] = unreachable

    def heal(self) -> None:
        self._failing.clear()

    def add(self, port: PortState) -> PortState:
        self.ports[port.port_id] = port
        return port

    @property
    def endpoint(self) -> str:
        return "fake://agent"

    @property
    def attach_timeout(self) -> float:
        return self._attach_timeout

    @property
    def capabilities(self) -> AgentCapabilities:
        return AgentCapabilities(lists_ports=True, reports_status=True, heartbeat=False)

    async def start(self) -> bool:
        self._call("start")
        return False

    async def ping(self) -> bool | None:
        raise PortError("the fake agent has no heartbeat")

    def _call(self, method: str) -> None:
        self.calls[method] += 1
        unreachable = self._failing.get(method, self._failing.get("*"))
        if unreachable is not None:
            what = "UNAVAILABLE: connection refused" if unreachable else "INTERNAL: refused"
            raise PortError(f"{method} failed at {self.endpoint}: {what}", unreachable=unreachable)

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        self._call("ensure_port")
        port = self.ports.get(spec.port_id)
        if port is not None and port.oper is OperStatus.UP and port.matches(spec):
            return Attachment(port, created=False)
        created = self.add(port_state(spec))
        return Attachment(created, created=True)

    async def delete_port(self, name: str) -> None:
        self._call("delete_port")
        if self.on_delete is not None:
            await self.on_delete(name)
        self.deleted.append(name)
        self.ports.pop(port_id_from_name(name), None)

    async def get_port(self, name: str) -> PortState | None:
        self._call("get_port")
        return self.ports.get(port_id_from_name(name))

    async def list_ports(self, seconds: float | None = None) -> list[PortState]:
        self._call("list_ports")
        return list(self.ports.values())

    async def missing_logical_bridges(self, names: list[str]) -> list[str]:
        self._call("missing_logical_bridges")
        return []

    async def close(self) -> None:
        pass

    def set_oper(self, port_id: str, oper: OperStatus, *errors: str) -> None:
        self.ports[port_id] = replace(self.ports[port_id], oper=oper, component_errors=errors)


class FakeHeld:
    """PodResources as the reconciler sees it: what containers hold, or unreadable.
    `during_read` runs inside a read, after the kubelet took its snapshot."""

    def __init__(self) -> None:
        self.by_resource: dict[str, dict[str, Holder]] = {}
        self.unavailable: str | None = None
        self.during_read: Hook | None = None
        self.reads = 0

    def hold(self, resource: str, device_id: str, pod: str = "pod") -> None:
        self.by_resource.setdefault(resource, {})[device_id] = Holder("default", pod, "c")

    def drop(self, resource: str, device_id: str) -> None:
        self.by_resource.get(resource, {}).pop(device_id, None)

    async def held(self, ours: Callable[[str], bool]) -> HeldDevices:
        self.reads += 1
        if self.unavailable is not None:
            raise PodResourcesUnavailable(self.unavailable)
        snapshot = HeldDevices(
            {name: dict(held) for name, held in self.by_resource.items() if ours(name) and held}
        )
        if self.during_read is not None:
            await self.during_read()
        return snapshot


def _typed(agent: FakeAgent, held: FakeHeld) -> tuple[HostAgent, HeldDeviceSource]:
    """For mypy: the fakes implement the Protocols they stand in for."""
    return agent, held
