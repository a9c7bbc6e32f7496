"""The port model: what a port should be, what the agent says it is, what we need of an agent."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

from xpu_bridge.common.errors import CallFailed

PortType = Literal["access", "trunk"]


class OperStatus(Enum):
    UNSPECIFIED = 0
    UP = 1
    DOWN = 2
    TO_BE_DELETED = 3


@dataclass(frozen=True, slots=True)
class PortSpec:
    """The bridge port one device needs; derived once per device at discovery."""

    port_id: str
    mac: bytes
    ptype: PortType
    logical_bridges: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PortState:
    """A bridge port as the host agent reports it."""

    name: str
    port_id: str
    mac: bytes
    ptype: PortType | None
    logical_bridges: tuple[str, ...]
    oper: OperStatus
    component_errors: tuple[str, ...] = ()

    def matches(self, spec: PortSpec, *, compare_mac: bool = True) -> bool:
        """Same type and bridges (in any order) and, unless told otherwise, the same MAC.

        Repair leaves the MAC out: sysfs stops showing it once the netdev moved into the pod.
        """
        return (
            (not compare_mac or self.mac == spec.mac)
            and self.ptype == spec.ptype
            and sorted(self.logical_bridges) == sorted(spec.logical_bridges)
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """Result of ensuring a port: the UP port, and whether this call brought it into being."""

    port: PortState
    created: bool


class PortError(CallFailed):
    """A port could not be ensured or removed; the message says why in operator terms."""


@dataclass(frozen=True, slots=True)
class AgentCapabilities:
    """What a backend can tell us; release, recovery and health adapt to what it cannot."""

    lists_ports: bool
    """ListBridgePorts shows every port. If not, release works from the kubelet and sysfs."""
    reports_status: bool
    """GetBridgePort answers the port's real state (oper status, components)."""
    heartbeat: bool
    """A heartbeat says whether the agent is healthy; else the outcome of RPCs does."""


class PortAttacher(Protocol):
    """What the allocator needs from a host agent."""

    async def ensure_port(self, spec: PortSpec) -> Attachment: ...

    async def delete_port(self, name: str) -> None: ...


class HostAgent(PortAttacher, Protocol):
    """What the daemon needs from a host agent backend; every method raises PortError."""

    @property
    def endpoint(self) -> str: ...

    @property
    def capabilities(self) -> AgentCapabilities: ...

    async def start(self) -> bool:
        """The agent's own start-up handshake, if it has one (a vendor plugin's Init); True
        when the agent was fresh (not initialized before: it started anew)."""
        ...

    async def ping(self) -> bool | None:
        """The heartbeat's verdict (capabilities.heartbeat), None when the agent serves no
        heartbeat; raises PortError if unreachable."""
        ...

    @property
    def attach_timeout(self) -> float:
        """The budget of one device's attach (hostAgent.attachTimeoutSeconds)."""
        ...

    async def get_port(self, name: str) -> PortState | None:
        """The port, or None when the agent does not have it."""
        ...

    async def list_ports(self, seconds: float | None = None) -> list[PortState]:
        """Every port on the agent within `seconds` (default: the attach budget); an agent
        that cannot list answers the ports this daemon knows it made."""
        ...

    async def missing_logical_bridges(self, names: list[str]) -> list[str]: ...

    async def close(self) -> None: ...


class NetworkFunctionAgent(Protocol):
    """DPU side: chain a network-function pod's two interfaces, named by their MACs."""

    async def create_network_function(self, input_mac: str, output_mac: str) -> None: ...

    async def delete_network_function(self, input_mac: str, output_mac: str) -> None: ...
