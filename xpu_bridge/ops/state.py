"""The `/debug/state` document: one shape for the daemon that writes it and `status` reading it."""

from __future__ import annotations

from typing import NotRequired, TypedDict


class HostAgentState(TypedDict):
    endpoint: str
    reachable: bool


class DeviceState(TypedDict):
    id: str
    pci: str
    pf: str | None
    health: str
    """"Healthy", or why the device is Unhealthy."""
    port: str
    """The port ID the device's bridge port has (or would have) on the xPU."""
    portState: str | None
    """The port's oper status as last seen (UP, DOWN, ...), None when it has no port."""
    prewarmed: NotRequired[bool]
    """Free, with its port attached and UP ahead of demand (bridgePort.prewarm)."""


class PoolState(TypedDict):
    registered: bool
    devices: list[DeviceState]


class DebugState(TypedDict):
    hostAgent: HostAgentState
    kubeletRestarts: int
    ready: bool
    notReadyReason: str | None
    pools: dict[str, PoolState]
