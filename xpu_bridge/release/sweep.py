"""The start-up sweep on an agent that cannot list: one Delete by name per unheld device.

Such an agent cannot say which ports exist, so after a restart every device of our pools that
no container holds may still have a port from before. Each gets one idempotent Delete, under
the usual guards except the mass-release one: on such an agent most devices are normally free.
"""

from __future__ import annotations

from xpu_bridge.hostagent.ports import OperStatus, PortSpec, PortState
from xpu_bridge.node.pool_set import PoolSet


def assumed_port(spec: PortSpec) -> PortState:
    """The port a device may have, as we would have made it (the name is the port ID)."""
    return PortState(
        name=spec.port_id,
        port_id=spec.port_id,
        mac=spec.mac,
        ptype=spec.ptype,
        logical_bridges=spec.logical_bridges,
        oper=OperStatus.UP,
    )


class StartupSweep:
    """Port IDs still to be swept; empty on an agent that lists its ports. It is seeded once,
    by recovery or, when PodResources could not be read then, by the first pass that can,
    with every device of our pools whose port we do not know: a held one is swept once no
    container holds it (its port may exist from before, though we could not adopt it)."""

    def __init__(self) -> None:
        self.pending: dict[str, PortState] = {}
        self.seeded = False

    def seed(self, pools: PoolSet, known: set[str]) -> None:
        self.seeded = True
        self.pending = {
            entry.spec.port_id: assumed_port(entry.spec)
            for pool in pools
            for entry in pool.devices()
            if entry.spec.port_id not in known
        }

    def done(self, port_id: str) -> None:
        self.pending.pop(port_id, None)
