"""The opi-evpn-bridge backend: BridgePortService and LogicalBridgeService, as that server behaves.

Create is idempotent by ID and asynchronous (DOWN, then UP later); Delete is asynchronous
(TO_BE_DELETED, then gone); List pages and answers NOT_FOUND until the first port exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import grpc

from opi_protos.evpn_gw import component_pb2
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.config import HostAgentConfig
from xpu_bridge.hostagent.port_ids import port_id_from_name
from xpu_bridge.hostagent.ports import (
    AgentCapabilities,
    Attachment,
    OperStatus,
    PortError,
    PortSpec,
    PortState,
    PortType,
)
from xpu_bridge.hostagent.rpc import AgentCaller, Budget, RequestObserver
from xpu_bridge.hostagent.tls import channel_for

log = logging.getLogger(__name__)

PTYPE_TO_WIRE: dict[PortType, pb.BridgePortType.ValueType] = {
    "access": pb.BRIDGE_PORT_TYPE_ACCESS,
    "trunk": pb.BRIDGE_PORT_TYPE_TRUNK,
}
PTYPE_FROM_WIRE: dict[int, PortType] = {wire: ptype for ptype, wire in PTYPE_TO_WIRE.items()}
KNOWN_OPER = frozenset(status.value for status in OperStatus)
LIST_PAGE_SIZE = 250
POLL_FIRST = 0.001
POLL_MAX = 0.05


def _poll_delays() -> Iterator[float]:
    """Ask again at once (a fast agent is UP by then), then back off to POLL_MAX."""
    yield 0.0
    delay = POLL_FIRST
    while True:
        yield delay
        delay = min(delay * 2, POLL_MAX)


def port_state(port: pb.BridgePort) -> PortState:
    status = port.status
    errors = tuple(
        f"{c.name}: {c.details or 'error'}"
        for c in status.components
        if c.status == component_pb2.COMP_STATUS_ERROR
    )
    oper = status.oper_status
    return PortState(
        name=port.name,
        port_id=port_id_from_name(port.name),
        mac=bytes(port.spec.mac_address),
        ptype=PTYPE_FROM_WIRE.get(port.spec.ptype),
        logical_bridges=tuple(port.spec.logical_bridges),
        oper=OperStatus(oper) if oper in KNOWN_OPER else OperStatus.UNSPECIFIED,
        component_errors=errors,
    )


class BridgePortClient:
    """The HostAgent for opi-evpn-bridge; one channel for the daemon's lifetime."""

    capabilities = AgentCapabilities(lists_ports=True, reports_status=True, heartbeat=False)

    def __init__(
        self,
        config: HostAgentConfig,
        channel: grpc.aio.Channel | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._channel = channel or channel_for(config)
        self._calls = AgentCaller(config, observer)
        self._ports = pb_grpc.BridgePortServiceStub(self._channel)
        self._bridges = pb_grpc.LogicalBridgeServiceStub(self._channel)

    @property
    def endpoint(self) -> str:
        return self._calls.endpoint

    @property
    def attach_timeout(self) -> float:
        return self._calls.config.attach_timeout_seconds

    async def close(self) -> None:
        await self._channel.close()

    async def start(self) -> bool:
        """opi-evpn-bridge has no handshake; the logical-bridge check follows."""
        return False

    async def ping(self) -> bool | None:
        raise PortError("opi-evpn-bridge has no heartbeat; its RPCs tell its health")

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        """Create (idempotent) or reuse the port, replace a mismatching one, wait until UP."""
        budget = self._calls.budget()
        created = False
        replaced = False
        while True:
            state = await self._create(spec, budget)
            if state.oper is OperStatus.TO_BE_DELETED:
                await self._wait_gone(state, budget)
                continue
            if not state.matches(spec):
                if replaced:
                    raise PortError(f"port {spec.port_id} keeps a different spec after replace")
                log.warning("port %s has a different spec on the xPU; replacing it", state.name)
                await self._delete(state.name, budget)
                await self._wait_gone(state, budget)
                replaced = True
                continue
            created = created or state.oper is not OperStatus.UP
            if state.oper is not OperStatus.UP:
                state = await self._wait_up(state, budget)
            return Attachment(state, created)

    async def _create(self, spec: PortSpec, budget: Budget) -> PortState:
        request = pb.CreateBridgePortRequest(
            bridge_port_id=spec.port_id,
            bridge_port=pb.BridgePort(
                spec=pb.BridgePortSpec(
                    mac_address=spec.mac,
                    ptype=PTYPE_TO_WIRE[spec.ptype],
                    logical_bridges=list(spec.logical_bridges),
                )
            ),
        )
        try:
            reply = await self._calls.call(
                "CreateBridgePort", self._ports.CreateBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            raise self._calls.failure(f"CreateBridgePort {spec.port_id}", error) from None
        return port_state(reply)

    async def get_port(self, name: str) -> PortState | None:
        return await self._get(name, self._calls.budget())

    async def _get(self, name: str, budget: Budget) -> PortState | None:
        request = pb.GetBridgePortRequest(name=name)
        try:
            reply = await self._calls.call(
                "GetBridgePort", self._ports.GetBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._calls.failure(f"GetBridgePort {name}", error) from None
        return port_state(reply)

    async def _poll(
        self, state: PortState, budget: Budget, done: Callable[[PortState | None], bool]
    ) -> PortState | None:
        delays = _poll_delays()
        current: PortState | None = state
        while not done(current):
            delay = next(delays)
            if current is not None and current.component_errors:
                raise PortError(
                    f"port {state.port_id} failed on the xPU: {'; '.join(current.component_errors)}"
                )
            if budget.remaining() <= delay:
                status = "gone" if current is None else current.oper.name
                raise PortError(
                    f"port {state.port_id} still {status} after {self.attach_timeout:g}s "
                    "(hostAgent.attachTimeoutSeconds)"
                )
            await asyncio.sleep(delay)
            current = await self._get(state.name, budget)
        return current

    async def _wait_up(self, state: PortState, budget: Budget) -> PortState:
        def up(current: PortState | None) -> bool:
            if current is None:
                raise PortError(f"port {state.port_id} vanished while coming UP")
            return current.oper is OperStatus.UP

        result = await self._poll(state, budget, up)
        assert result is not None
        return result

    async def _wait_gone(self, state: PortState, budget: Budget) -> None:
        await self._poll(state, budget, lambda current: current is None)

    async def delete_port(self, name: str) -> None:
        """Delete with allow_missing: a port that is already gone is not an error."""
        await self._delete(name, self._calls.budget())

    async def _delete(self, name: str, budget: Budget) -> None:
        request = pb.DeleteBridgePortRequest(name=name, allow_missing=True)
        try:
            await self._calls.call(
                "DeleteBridgePort", self._ports.DeleteBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            raise self._calls.failure(f"DeleteBridgePort {name}", error) from None

    async def list_ports(self, seconds: float | None = None) -> list[PortState]:
        """Every port on the agent, all pages, within `seconds` (default: the attach budget)."""
        budget = self._calls.budget(seconds)
        ports: list[PortState] = []
        token = ""
        while True:
            request = pb.ListBridgePortsRequest(page_size=LIST_PAGE_SIZE, page_token=token)
            try:
                reply = await self._calls.call(
                    "ListBridgePorts", self._ports.ListBridgePorts, request, budget
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and not token:
                    return []  # opi-evpn-bridge answers NOT_FOUND until its first port exists
                raise self._calls.failure("ListBridgePorts", error) from None
            ports.extend(port_state(port) for port in reply.bridge_ports)
            token = reply.next_page_token
            if not token:
                return ports

    async def missing_logical_bridges(self, names: list[str]) -> list[str]:
        """The configured logical bridges the agent does not know."""
        budget = self._calls.budget()
        missing = []
        for name in names:
            request = pb.GetLogicalBridgeRequest(name=name)
            try:
                await self._calls.call(
                    "GetLogicalBridge", self._bridges.GetLogicalBridge, request, budget
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise self._calls.failure(f"GetLogicalBridge {name}", error) from None
                missing.append(name)
        return missing
