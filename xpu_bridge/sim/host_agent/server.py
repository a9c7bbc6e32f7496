"""SimHostAgent, the test-facing handle: state, fault plan and a restartable server."""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.sim import polling
from xpu_bridge.sim.host_agent.config import (
    BRIDGE_COMPONENTS,
    DEFAULT_DELETE_DELAY,
    DEFAULT_UP_DELAY,
    PORT_COMPONENTS,
    AgentConfig,
)
from xpu_bridge.sim.host_agent.faults import FaultControls, FaultInterceptor, Faults
from xpu_bridge.sim.host_agent.listener import OPI_SERVICES, ServerTLS
from xpu_bridge.sim.host_agent.names import port_name, resource_id
from xpu_bridge.sim.host_agent.registry import Registry
from xpu_bridge.sim.host_agent.servicers import add_opi_servicers
from xpu_bridge.sim.host_agent.serving import Serving
from xpu_bridge.sim.host_agent.specs import clone


class SimHostAgent(FaultControls):
    """A simulated OPI host agent: state, fault plan and a restartable grpc.aio server."""

    def __init__(
        self,
        bridges: Iterable[str] = (),
        *,
        up_delay: float = DEFAULT_UP_DELAY,
        up_on_create: bool = False,
        delete_delay: float = DEFAULT_DELETE_DELAY,
        seed: int | None = None,
        drop_state_on_restart: bool = False,
        port_components: Sequence[str] = PORT_COMPONENTS,
        bridge_components: Sequence[str] = BRIDGE_COMPONENTS,
        strict_ids: bool = True,
        list_not_found_until_first_create: bool = True,
        tls: ServerTLS | None = None,
    ) -> None:
        self.config = AgentConfig(
            up_delay=up_delay,
            up_on_create=up_on_create,
            delete_delay=delete_delay,
            port_components=tuple(port_components),
            bridge_components=tuple(bridge_components),
            strict_ids=strict_ids,
            list_not_found_until_first_create=list_not_found_until_first_create,
        )
        self.drop_state_on_restart = drop_state_on_restart
        self.calls: Counter[str] = Counter()
        self.faults = Faults(rng=random.Random(seed))
        self._registry = Registry(self.config, bridges)
        self._server = Serving(
            "sim host agent",
            functools.partial(add_opi_servicers, self._registry),
            OPI_SERVICES,
            FaultInterceptor(self.calls, self.faults),
            self.reset_state,
            default_address="127.0.0.1:0",
        )
        self._server.tls = tls

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, address: str | None = None) -> int:
        """Serve on `unix:///path` or `host:port` (default: the last address, else
        127.0.0.1:0). Returns the bound TCP port, 0 for unix sockets."""
        drop = self.drop_state_on_restart and self._server.started_before
        return await self._server.start(address, drop_state=drop)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (state is kept) and remove the unix socket file."""
        await self._server.stop(grace)

    async def restart(
        self, *, drop_state: bool | None = None, downtime: float = 0.0, grace: float | None = None
    ) -> int:
        """Stop, stay down for `downtime` seconds, start on the same address. A real agent
        with an in-memory store loses everything: pass drop_state=True for that."""
        drop = self.drop_state_on_restart if drop_state is None else drop_state
        return await self._server.restart(drop_state=drop, downtime=downtime, grace=grace)

    @property
    def tls(self) -> ServerTLS | None:
        """TLS served on TCP addresses; kept across restarts."""
        return self._server.tls

    @tls.setter
    def tls(self, tls: ServerTLS | None) -> None:
        self._server.tls = tls

    @property
    def target(self) -> str:
        """What a client passes to grpc.aio.insecure_channel() (secure_channel() with TLS)."""
        return self._server.target

    @property
    def serving(self) -> bool:
        return self._server.serving

    # state -------------------------------------------------------------------------------

    @property
    def up_delay(self) -> float:
        return self.config.up_delay

    @up_delay.setter
    def up_delay(self, seconds: float) -> None:
        self.config.up_delay = seconds

    @property
    def up_on_create(self) -> bool:
        """Create answers with the port UP at once (no DOWN phase, up_delay unused)."""
        return self.config.up_on_create

    @up_on_create.setter
    def up_on_create(self, value: bool) -> None:
        self.config.up_on_create = value

    @property
    def delete_delay(self) -> float:
        return self.config.delete_delay

    @delete_delay.setter
    def delete_delay(self, seconds: float) -> None:
        self.config.delete_delay = seconds

    def reset_state(self) -> None:
        """Back to the constructor's bridges and no ports (counters and faults stay)."""
        self._registry.reset()

    def add_bridge(
        self, bridge: str, vlan_id: int | None = None, vni: int | None = None
    ) -> pb.LogicalBridge:
        """Add a logical bridge that is UP at once (not re-created by reset_state)."""
        return self._registry.add_bridge(bridge, vlan_id, vni)

    @property
    def ports(self) -> dict[str, pb.BridgePort]:
        """Current ports by ID (copies)."""
        return {resource_id(n): clone(e.msg) for n, e in self._registry.ports.entries.items()}

    @property
    def deletions(self) -> list[tuple[float, str]]:
        """(time.monotonic(), port ID) of every Delete that found its port, across restarts."""
        return [(at, resource_id(name)) for at, name in self._registry.ports.deletions]

    @property
    def bridges(self) -> dict[str, pb.LogicalBridge]:
        """Current logical bridges by ID (copies)."""
        return {resource_id(n): clone(e.msg) for n, e in self._registry.bridges.entries.items()}

    def port(self, port: str) -> pb.BridgePort | None:
        """One port by ID or full name, or None."""
        entry = self._registry.ports.entries.get(port_name(port))
        return None if entry is None else clone(entry.msg)

    async def wait_until(
        self,
        predicate: Callable[[], bool | Awaitable[bool]],
        timeout: float = 5.0,
        interval: float = 0.005,
    ) -> None:
        await polling.wait_until(predicate, timeout, interval)

    # out-of-band events ------------------------------------------------------------------

    def set_port_error(self, port: str, details: str = "simulated component failure") -> None:
        """The port's first component reports ERROR and the port goes DOWN (a dying port
        stays TO_BE_DELETED but stops dying) until clear_port_error() or delete_port_now()."""
        self._registry.ports.fail_port(port_name(port), details)

    def clear_port_error(self, port: str) -> None:
        self._registry.ports.recover_port(port_name(port))

    def delete_port_now(self, port: str) -> bool:
        """Someone deleted the port out of band: it vanishes at once."""
        return self._registry.ports.remove_port(port_name(port))

    def drop_all_ports(self) -> int:
        """The xPU rebooted: every port vanishes at once (bridges stay)."""
        names = list(self._registry.ports.entries)
        for name in names:
            self._registry.ports.remove_port(name)
        return len(names)


async def serve_host_agent(
    listen: str,
    bridges: Sequence[str] = (),
    up_delay: float = DEFAULT_UP_DELAY,
    delete_delay: float = DEFAULT_DELETE_DELAY,
    *,
    up_on_create: bool = False,
    seed: int | None = None,
    on_started: Callable[[SimHostAgent], None] | None = None,
) -> None:
    """Run a simulated agent on `listen` until cancelled (the `sim-agent` CLI command);
    `up_on_create` answers Create with the port UP, as the Intel IPU plugin does."""
    agent = SimHostAgent(
        bridges, up_delay=up_delay, up_on_create=up_on_create, delete_delay=delete_delay, seed=seed
    )
    await agent.start(listen)
    if on_started is not None:
        on_started(agent)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop(grace=0.5)
