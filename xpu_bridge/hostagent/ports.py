"""The port contract between pools and the host agent: what a port should be, what it is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

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

    def matches(self, spec: PortSpec) -> bool:
        return (
            self.mac == spec.mac
            and self.ptype == spec.ptype
            and sorted(self.logical_bridges) == sorted(spec.logical_bridges)
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """Result of ensuring a port: the UP port, and whether this call brought it into being."""

    port: PortState
    created: bool


class PortError(Exception):
    """A port could not be ensured or removed; the message says why in operator terms."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class PortAttacher(Protocol):
    """What the allocator needs from the host agent side."""

    async def ensure_port(self, spec: PortSpec) -> Attachment: ...

    async def delete_port(self, name: str) -> None: ...
