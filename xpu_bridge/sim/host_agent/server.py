"""SimHostAgent, the test-facing handle: state, fault plan and a restartable server."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from xpu_bridge.common.addresses import unix_socket_path
from xpu_bridge.sim import polling
from xpu_bridge.sim.host_agent.config import (
    BRIDGE_COMPONENTS,
    DEFAULT_DELETE_DELAY,
    DEFAULT_UP_DELAY,
    PORT_COMPONENTS,
    AgentConfig,
)
from xpu_bridge.sim.host_agent.faults import FaultInterceptor, Faults
from xpu_bridge.sim.host_agent.listener import Listener, ServerTLS
from xpu_bridge.sim.host_agent.names import port_name, resource_id
from xpu_bridge.sim.host_agent.registry import Registry
from xpu_bridge.sim.host_agent.specs import clone

log = logging.getLogger(__name__)


class SimHostAgent:
    """A simulated OPI host agent: state, fault plan and a restartable grpc.aio server."""

    def __init__(
        self,
        bridges: Iterable[str] = (),
        *,
        up_delay: float = DEFAULT_UP_DELAY,
        delete_delay: float = DEFAULT_DELETE_DELAY,
        seed: int | None = None,
        drop_state_on_restart: bool = False,
        port_components: Sequence[str] = PORT_COMPONENTS,
        bridge_components: Sequence[str] = BRIDGE_COMPONENTS,
        strict_ids: bool = True,
        list_not_found_until_first_create: bool = True,
        tls: ServerTLS | None = None,
    ) -> None:
        self.tls = tls  # serve TLS (TCP addresses only); kept across restarts
        self.config = AgentConfig(
            up_delay=up_delay,
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
        self._listener: Listener | None = None
        self._address: str | None = None
        self._started_before = False

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, address: str | None = None) -> int:
        """Serve on `unix:///path` or `host:port` (default: the last address, else
        127.0.0.1:0). Returns the bound TCP port, 0 for unix sockets."""
        drop = self.drop_state_on_restart and self._started_before
        return await self._start(address, drop_state=drop)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (state is kept) and remove the unix socket file."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        await listener.stop(grace)
        self._started_before = True
        log.info("sim host agent stopped on %s", self._address)

    async def restart(
        self, *, drop_state: bool | None = None, downtime: float = 0.0, grace: float | None = None
    ) -> int:
        """Stop, stay down for `downtime` seconds, start on the same address. A real agent
        with an in-memory store loses everything: pass drop_state=True for that."""
        await self.stop(grace)
        if downtime > 0:
            await asyncio.sleep(downtime)
        drop = self.drop_state_on_restart if drop_state is None else drop_state
        return await self._start(None, drop_state=drop)

    async def _start(self, address: str | None, *, drop_state: bool) -> int:
        if self._listener is not None:
            raise RuntimeError(f"already serving on {self._address}")
        address = address or self._address or "127.0.0.1:0"
        if unix_socket_path(address) is not None and self.tls is not None:
            raise ValueError(f"TLS applies to host:port addresses only, not {address}")
        if drop_state:
            self.reset_state()
        interceptor = FaultInterceptor(self.calls, self.faults)
        listener = await Listener.start(address, self._registry, interceptor, self.tls)
        self._listener, self._address = listener, listener.address
        log.info("sim host agent serving on %s", self._address)
        return listener.port

    @property
    def target(self) -> str:
        """What a client passes to grpc.aio.insecure_channel() (secure_channel() with TLS)."""
        if self._address is None:
            raise RuntimeError("agent was never started")
        return self._address

    @property
    def serving(self) -> bool:
        return self._listener is not None

    # state -------------------------------------------------------------------------------

    @property
    def up_delay(self) -> float:
        return self.config.up_delay

    @up_delay.setter
    def up_delay(self, seconds: float) -> None:
        self.config.up_delay = seconds

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

    # fault injection ---------------------------------------------------------------------

    def set_latency(self, method: str, seconds: float) -> None:
        """Add `seconds` before `method` (or "*") is handled; 0 removes it."""
        self.faults.set_latency(method, seconds)

    def set_error_rate(
        self,
        method: str,
        rate: float,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        message: str | None = None,
    ) -> None:
        """Fail `rate` (0..1) of calls to `method` (or "*") with `code`; 0 removes it."""
        self.faults.set_error_rate(method, rate, code, message)

    def fail_next(
        self, method: str, count: int = 1, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """Fail exactly the next `count` calls to `method` (or "*"): deterministic retries."""
        self.faults.fail_next(method, count, code)

    def set_unavailable(self, seconds: float | None = None) -> None:
        """Every RPC answers UNAVAILABLE for `seconds`, or until clear_unavailable()."""
        self.faults.set_unavailable(seconds)

    def clear_unavailable(self) -> None:
        self.faults.unavailable_until = None

    def clear_faults(self) -> None:
        self.faults.clear()


async def serve_host_agent(
    listen: str,
    bridges: Sequence[str] = (),
    up_delay: float = DEFAULT_UP_DELAY,
    delete_delay: float = DEFAULT_DELETE_DELAY,
    *,
    seed: int | None = None,
    on_started: Callable[[SimHostAgent], None] | None = None,
) -> None:
    """Run a simulated agent on `listen` until cancelled (the `sim-agent` CLI command)."""
    agent = SimHostAgent(bridges, up_delay=up_delay, delete_delay=delete_delay, seed=seed)
    await agent.start(listen)
    if on_started is not None:
        on_started(agent)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop(grace=0.5)
