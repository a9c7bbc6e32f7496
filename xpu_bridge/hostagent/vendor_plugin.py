"""The dpu-operator vendor plugin backend (Intel IPU, Marvell, ...): OPI ports by name, plus Vendor.

A vendor plugin keys ports by `bridge_port.name` (from the port name template), answers Create
synchronously and idempotently by name, reads `logical_bridges[0]` as a VLAN and the MAC's
second byte as the VF's VSI. Its Get answers a stub for any name and its List is always
empty, so this client keeps the ports it made itself: that is what list_ports answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc

from opi_protos.dpu_api import api_pb2 as vendor
from opi_protos.dpu_api import api_pb2_grpc as vendor_grpc
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.config import HostAgentConfig
from xpu_bridge.hostagent.opi_evpn import port_state
from xpu_bridge.hostagent.port_ids import port_id_from_name
from xpu_bridge.hostagent.ports import (
    AgentCapabilities,
    Attachment,
    OperStatus,
    PortError,
    PortSpec,
    PortState,
)
from xpu_bridge.hostagent.rpc import AgentCaller, Budget, RequestObserver
from xpu_bridge.hostagent.tls import channel_for

log = logging.getLogger(__name__)

ALREADY_INITIALIZED = "already initialized"
SENDER_ID = "xpu-bridge"
REFUSED_HINT = (
    "see the vendor plugin's log (it refuses when it has no free interface, a VLAN outside "
    "2-4094, or a MAC whose second byte, the VSI, is 0)"
)
ACCEPTED_OPER = (OperStatus.UP, OperStatus.UNSPECIFIED)


def _assumed(spec: PortSpec) -> PortState:
    """The port a Create may have made, as we asked for it (the name is the port ID)."""
    return PortState(
        name=spec.port_id,
        port_id=spec.port_id,
        mac=spec.mac,
        ptype=spec.ptype,
        logical_bridges=spec.logical_bridges,
        oper=OperStatus.UP,
    )


@dataclass
class InitCount:
    """Inits the plugin took (each means it was fresh: at our start or after a restart), and
    how many of them start() has reported, so a fresh plugin a Create found is reported too."""

    taken: int = 0
    told: int = 0

    def news(self) -> bool:
        """Whether the plugin took an Init since the last call."""
        fresh, self.told = self.taken != self.told, self.taken
        return fresh


class VendorPluginClient:
    """The HostAgent for a dpu-operator VSP, and its Device, Heartbeat and NF services."""

    capabilities = AgentCapabilities(lists_ports=False, reports_status=False, heartbeat=True)

    def __init__(
        self,
        config: HostAgentConfig,
        dpu_mode: bool = False,
        channel: grpc.aio.Channel | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._channel = channel or channel_for(config)
        self._calls = AgentCaller(config, observer, refused_hint=REFUSED_HINT)
        self._dpu_mode = dpu_mode
        self._ports = pb_grpc.BridgePortServiceStub(self._channel)
        self._life = vendor_grpc.LifeCycleServiceStub(self._channel)
        self._devices = vendor_grpc.DeviceServiceStub(self._channel)
        self._heartbeat = vendor_grpc.HeartbeatServiceStub(self._channel)
        self._functions = vendor_grpc.NetworkFunctionServiceStub(self._channel)
        self._known: dict[str, PortState] = {}
        self._inits = InitCount()

    @property
    def endpoint(self) -> str:
        return self._calls.endpoint

    @property
    def attach_timeout(self) -> float:
        return self._calls.config.attach_timeout_seconds

    async def close(self) -> None:
        await self._channel.close()

    async def start(self) -> bool:
        """Init, as dpu-operator calls it first; "already initialized" is success. A plugin
        that takes Init again has restarted and lost its ports (it keeps them in memory):
        True then, and also when a Create took it there since the last start()."""
        await self._init(self._calls.budget())
        return self._inits.news()

    async def _init(self, budget: Budget) -> None:
        request = vendor.InitRequest(dpu_mode=self._dpu_mode)
        try:
            await self._calls.call("Init", self._life.Init, request, budget)
        except grpc.aio.AioRpcError as error:
            if ALREADY_INITIALIZED in (error.details() or ""):
                return
            raise self._calls.failure("Init", error) from None
        self._inits.taken += 1
        log.info("vendor plugin at %s initialized (dpu_mode=%s)", self.endpoint, self._dpu_mode)

    async def _initialized_since(self, inits: int, budget: Budget) -> bool:
        """Init now, in case the plugin restarted and refuses everything until it gets one:
        whether it took an Init (this one or another caller's) since `inits` were counted."""
        try:
            await self._init(budget)
        except PortError:
            return False
        return self._inits.taken != inits

    async def ensure_port(self, spec: PortSpec) -> Attachment:
        """Create by name; a stored port with another spec is deleted and created again."""
        try:
            return await self._ensure(spec, self._calls.budget())
        except PortError as error:
            if error.unreachable:
                # A Create that timed out or lost its reply may have taken effect, and the
                # plugin cannot list: the port counts as ours, so that a release pass deletes
                # it (by name, idempotently) unless a container comes to hold the device.
                self._known.setdefault(spec.port_id, _assumed(spec))
            raise

    async def _ensure(self, spec: PortSpec, budget: Budget) -> Attachment:
        created = spec.port_id not in self._known
        state = await self._create(spec, budget)
        if not state.matches(spec):
            log.warning("port %s has a different spec on the xPU; replacing it", spec.port_id)
            await self._delete(spec.port_id, budget)
            state = await self._create(spec, budget)
            if not state.matches(spec):
                raise PortError(f"port {spec.port_id} keeps a different spec after replace")
            created = True
        if state.oper not in ACCEPTED_OPER:
            raise PortError(f"port {spec.port_id} is {state.oper.name} after Create")
        up = PortState(
            name=state.name,
            port_id=spec.port_id,
            mac=state.mac,
            ptype=state.ptype,
            logical_bridges=state.logical_bridges,
            oper=OperStatus.UP,
        )
        self._known[spec.port_id] = up
        return Attachment(up, created)

    async def _create(self, spec: PortSpec, budget: Budget) -> PortState:
        request = pb.CreateBridgePortRequest(
            bridge_port=pb.BridgePort(
                name=spec.port_id,
                spec=pb.BridgePortSpec(
                    mac_address=spec.mac,
                    ptype=pb.BRIDGE_PORT_TYPE_ACCESS,
                    logical_bridges=list(spec.logical_bridges),
                ),
            ),
        )
        inits = self._inits.taken
        try:
            reply = await self._calls.call(
                "CreateBridgePort", self._ports.CreateBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            failure = self._calls.failure(f"CreateBridgePort {spec.port_id}", error)
            # A plugin that restarted refuses every Create until its next Init, which the
            # heartbeat sends only seconds later: Init now, and if that (or another) Init
            # made it ready since this Create went out, send the Create once more.
            if failure.unreachable or not await self._initialized_since(inits, budget):
                raise failure from None
            try:
                reply = await self._calls.call(
                    "CreateBridgePort", self._ports.CreateBridgePort, request, budget
                )
            except grpc.aio.AioRpcError as again:
                raise self._calls.failure(f"CreateBridgePort {spec.port_id}", again) from None
        return port_state(reply)

    async def get_port(self, name: str) -> PortState | None:
        """What we know: the plugin's Get answers a stub for any name."""
        return self._known.get(port_id_from_name(name))

    async def list_ports(self, seconds: float | None = None) -> list[PortState]:
        """The ports this daemon made, adopted or may have made (a Create that timed out or
        lost its reply): the plugin's List is always empty."""
        return list(self._known.values())

    async def delete_port(self, name: str) -> None:
        """The plugin answers OK for a name it does not know."""
        await self._delete(name, self._calls.budget())

    async def _delete(self, name: str, budget: Budget) -> None:
        request = pb.DeleteBridgePortRequest(name=name, allow_missing=True)
        try:
            await self._calls.call(
                "DeleteBridgePort", self._ports.DeleteBridgePort, request, budget
            )
        except grpc.aio.AioRpcError as error:
            raise self._calls.failure(f"DeleteBridgePort {name}", error) from None
        self._known.pop(port_id_from_name(name), None)

    async def missing_logical_bridges(self, names: list[str]) -> list[str]:
        """A vendor plugin has no LogicalBridgeService; pools name VLANs instead."""
        return []

    async def ping(self) -> bool | None:
        """Ping; None when the plugin does not serve HeartbeatService (dpu-operator's daemon
        serves it, not every plugin), so that Init alone tells reachability."""
        request = vendor.PingRequest(timestamp=time.time_ns(), sender_id=SENDER_ID)
        budget = self._calls.budget(self._calls.config.rpc_timeout_seconds)
        try:
            reply = await self._calls.call("Ping", self._heartbeat.Ping, request, budget)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise self._calls.failure("Ping", error) from None
        return reply.healthy

    async def set_num_vfs(self, count: int) -> int:
        """SetNumVfs on the plugin's own PF; answers the count it made."""
        request = vendor.VfCount(vf_cnt=count)
        try:
            reply = await self._calls.call(
                "SetNumVfs", self._devices.SetNumVfs, request, self._calls.budget()
            )
        except grpc.aio.AioRpcError as error:
            raise self._calls.failure(f"SetNumVfs {count}", error) from None
        return reply.vf_cnt

    async def create_network_function(self, input_mac: str, output_mac: str) -> None:
        """Once: a vendor's Create need not be idempotent, so it is never retried."""
        request = vendor.NFRequest(input=input_mac, output=output_mac)
        rpc = self._functions.CreateNetworkFunction
        try:
            await self._calls.call(
                "CreateNetworkFunction", rpc, request, self._calls.budget(), retry=False
            )
        except grpc.aio.AioRpcError as error:
            what = f"CreateNetworkFunction {input_mac} -> {output_mac}"
            raise self._calls.failure(what, error) from None

    async def delete_network_function(self, input_mac: str, output_mac: str) -> None:
        request = vendor.NFRequest(input=input_mac, output=output_mac)
        rpc = self._functions.DeleteNetworkFunction
        try:
            await self._calls.call("DeleteNetworkFunction", rpc, request, self._calls.budget())
        except grpc.aio.AioRpcError as error:
            what = f"DeleteNetworkFunction {input_mac} -> {output_mac}"
            raise self._calls.failure(what, error) from None
