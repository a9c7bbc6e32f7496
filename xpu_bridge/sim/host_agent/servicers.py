"""gRPC servicers of BridgePortService and LogicalBridgeService over the agent's store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc
from google.protobuf import empty_pb2

from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2 as pb
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.sim.host_agent.bridges import Bridges
from xpu_bridge.sim.host_agent.errors import AgentError
from xpu_bridge.sim.host_agent.registry import Registry

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Result = TypeVar("Result")


async def answer(
    context: grpc.aio.ServicerContext[Req, Resp], action: Callable[[Req], Result], request: Req
) -> Result:
    """Run domain code and turn an AgentError into the gRPC status it carries."""
    try:
        return action(request)
    except AgentError as err:
        await context.abort(err.code, err.message)
        raise  # unreachable: abort raises


class PortStore(Protocol):
    """What BridgePortServicer serves from: the opi agent's Ports, or another simulator's
    ports with its own semantics; raising AgentError answers that status."""

    def create_port(self, request: pb.CreateBridgePortRequest) -> pb.BridgePort: ...

    def get_port(self, request: pb.GetBridgePortRequest) -> pb.BridgePort: ...

    def list_ports(self, request: pb.ListBridgePortsRequest) -> pb.ListBridgePortsResponse: ...

    def delete_port(self, request: pb.DeleteBridgePortRequest) -> None: ...

    def update_port(self, request: pb.UpdateBridgePortRequest) -> pb.BridgePort: ...


class BridgePortServicer(pb_grpc.BridgePortServiceServicer):
    def __init__(self, ports: PortStore) -> None:
        self._ports = ports

    async def CreateBridgePort(
        self,
        request: pb.CreateBridgePortRequest,
        context: grpc.aio.ServicerContext[pb.CreateBridgePortRequest, pb.BridgePort],
    ) -> pb.BridgePort:
        return await answer(context, self._ports.create_port, request)

    async def GetBridgePort(
        self,
        request: pb.GetBridgePortRequest,
        context: grpc.aio.ServicerContext[pb.GetBridgePortRequest, pb.BridgePort],
    ) -> pb.BridgePort:
        return await answer(context, self._ports.get_port, request)

    async def ListBridgePorts(
        self,
        request: pb.ListBridgePortsRequest,
        context: grpc.aio.ServicerContext[pb.ListBridgePortsRequest, pb.ListBridgePortsResponse],
    ) -> pb.ListBridgePortsResponse:
        return await answer(context, self._ports.list_ports, request)

    async def DeleteBridgePort(
        self,
        request: pb.DeleteBridgePortRequest,
        context: grpc.aio.ServicerContext[pb.DeleteBridgePortRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        await answer(context, self._ports.delete_port, request)
        return empty_pb2.Empty()

    async def UpdateBridgePort(
        self,
        request: pb.UpdateBridgePortRequest,
        context: grpc.aio.ServicerContext[pb.UpdateBridgePortRequest, pb.BridgePort],
    ) -> pb.BridgePort:
        return await answer(context, self._ports.update_port, request)


class LogicalBridgeServicer(pb_grpc.LogicalBridgeServiceServicer):
    def __init__(self, bridges: Bridges) -> None:
        self._bridges = bridges

    async def CreateLogicalBridge(
        self,
        request: pb.CreateLogicalBridgeRequest,
        context: grpc.aio.ServicerContext[pb.CreateLogicalBridgeRequest, pb.LogicalBridge],
    ) -> pb.LogicalBridge:
        return await answer(context, self._bridges.create_bridge, request)

    async def GetLogicalBridge(
        self,
        request: pb.GetLogicalBridgeRequest,
        context: grpc.aio.ServicerContext[pb.GetLogicalBridgeRequest, pb.LogicalBridge],
    ) -> pb.LogicalBridge:
        return await answer(context, self._bridges.get_bridge, request)

    async def ListLogicalBridges(
        self,
        request: pb.ListLogicalBridgesRequest,
        context: grpc.aio.ServicerContext[
            pb.ListLogicalBridgesRequest, pb.ListLogicalBridgesResponse
        ],
    ) -> pb.ListLogicalBridgesResponse:
        return await answer(context, self._bridges.list_bridges, request)

    async def DeleteLogicalBridge(
        self,
        request: pb.DeleteLogicalBridgeRequest,
        context: grpc.aio.ServicerContext[pb.DeleteLogicalBridgeRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        await answer(context, self._bridges.delete_bridge, request)
        return empty_pb2.Empty()

    async def UpdateLogicalBridge(
        self,
        request: pb.UpdateLogicalBridgeRequest,
        context: grpc.aio.ServicerContext[pb.UpdateLogicalBridgeRequest, pb.LogicalBridge],
    ) -> pb.LogicalBridge:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "UpdateLogicalBridge is not simulated")
        raise AssertionError("unreachable")


def add_opi_servicers(registry: Registry, server: grpc.aio.Server) -> None:
    """The opi-evpn-bridge services over `registry`, for Listener.start."""
    pb_grpc.add_BridgePortServiceServicer_to_server(BridgePortServicer(registry.ports), server)
    pb_grpc.add_LogicalBridgeServiceServicer_to_server(
        LogicalBridgeServicer(registry.bridges), server
    )
