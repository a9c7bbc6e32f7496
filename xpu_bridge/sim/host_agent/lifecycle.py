"""Stored objects and their asynchronous lifecycle: components go PENDING, a timer ends it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb

CompStatus: TypeAlias = component_pb2.CompStatus.ValueType
Finish: TypeAlias = Callable[[str, int], None]


def pending(names: Iterable[str]) -> list[component_pb2.Component]:
    """The components of a new object, one per subscriber, none done yet."""
    return [
        component_pb2.Component(name=n, status=component_pb2.COMP_STATUS_PENDING) for n in names
    ]


def _set_components(components: Iterable[component_pb2.Component], status: CompStatus) -> None:
    for component in components:
        component.status = status
        component.details = ""


@dataclass(kw_only=True)
class Lifecycle:
    """Generation and pending timer of one object. Timers stand in for upstream's task
    manager; a newer phase bumps the generation, like upstream's resource version."""

    generation: int = 0
    timer: asyncio.Handle | None = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def supersede(self) -> None:
        """Whatever was pending no longer applies."""
        self.cancel()
        self.generation += 1

    def schedule(self, name: str, delay: float, finish: Finish) -> None:
        """`finish(name, generation)` runs after `delay` (0: next loop iteration) unless a
        newer phase supersedes it."""
        self.supersede()
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self.timer = loop.call_soon(finish, name, self.generation)
        else:
            self.timer = loop.call_later(delay, finish, name, self.generation)

    def timer_fired(self, generation: int) -> bool:
        """The timer of `generation` fired: True if that phase is still current (and then
        no timer is pending any more)."""
        if self.generation != generation:
            return False
        self.timer = None
        return True


@dataclass
class PortEntry(Lifecycle):
    msg: pb.BridgePort
    bridges: tuple[str, ...]
    mac: str

    def set_state(self, oper: pb.BPOperStatus.ValueType, components: CompStatus) -> None:
        self.msg.status.oper_status = oper
        _set_components(self.msg.status.components, components)

    def begin(self, oper: pb.BPOperStatus.ValueType, delay: float, finish: Finish) -> None:
        """Components go PENDING and `finish` runs after `delay`."""
        self.set_state(oper, component_pb2.COMP_STATUS_PENDING)
        self.schedule(self.msg.name, delay, finish)


@dataclass
class BridgeEntry(Lifecycle):
    msg: pb.LogicalBridge
    ports: set[str] = field(default_factory=set)
    macs: dict[str, str] = field(default_factory=dict)

    def set_state(self, oper: pb.LBOperStatus.ValueType, components: CompStatus) -> None:
        self.msg.status.oper_status = oper
        _set_components(self.msg.status.components, components)

    def begin(self, oper: pb.LBOperStatus.ValueType, delay: float, finish: Finish) -> None:
        """Components go PENDING and `finish` runs after `delay`."""
        self.set_state(oper, component_pb2.COMP_STATUS_PENDING)
        self.schedule(self.msg.name, delay, finish)
