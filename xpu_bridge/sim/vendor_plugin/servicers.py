"""gRPC servicers of the VSP's package Vendor services, and adding all its services to a server."""

from __future__ import annotations

import grpc

from opi_protos.dpu_api import api_pb2
from opi_protos.dpu_api import api_pb2_grpc as vendor_grpc
from opi_protos.evpn_gw import l2_xpu_infra_mgr_pb2_grpc as pb_grpc
from xpu_bridge.sim.host_agent.servicers import BridgePortServicer, answer
from xpu_bridge.sim.vendor_plugin.state import VspState

Context = grpc.aio.ServicerContext


class LifeCycleServicer(vendor_grpc.LifeCycleServiceServicer):
    def __init__(self, state: VspState) -> None:
        self._state = state

    async def Init(
        self,
        request: api_pb2.InitRequest,
        context: Context[api_pb2.InitRequest, api_pb2.IpPort],
    ) -> api_pb2.IpPort:
        return await answer(context, self._state.lifecycle.init, request)


class NetworkFunctionServicer(vendor_grpc.NetworkFunctionServiceServicer):
    def __init__(self, state: VspState) -> None:
        self._state = state

    async def CreateNetworkFunction(
        self,
        request: api_pb2.NFRequest,
        context: Context[api_pb2.NFRequest, api_pb2.Empty],
    ) -> api_pb2.Empty:
        return await answer(context, self._state.functions.create, request)

    async def DeleteNetworkFunction(
        self,
        request: api_pb2.NFRequest,
        context: Context[api_pb2.NFRequest, api_pb2.Empty],
    ) -> api_pb2.Empty:
        return await answer(context, self._state.functions.delete, request)


class DeviceServicer(vendor_grpc.DeviceServiceServicer):
    def __init__(self, state: VspState) -> None:
        self._state = state

    async def GetDevices(
        self,
        request: api_pb2.Empty,
        context: Context[api_pb2.Empty, api_pb2.DeviceListResponse],
    ) -> api_pb2.DeviceListResponse:
        return await answer(context, self._state.devices.get_devices, request)

    async def SetNumVfs(
        self,
        request: api_pb2.VfCount,
        context: Context[api_pb2.VfCount, api_pb2.VfCount],
    ) -> api_pb2.VfCount:
        return await answer(context, self._state.devices.set_num_vfs, request)


class HeartbeatServicer(vendor_grpc.HeartbeatServiceServicer):
    def __init__(self, state: VspState) -> None:
        self._state = state

    async def Ping(
        self,
        request: api_pb2.PingRequest,
        context: Context[api_pb2.PingRequest, api_pb2.PingResponse],
    ) -> api_pb2.PingResponse:
        return await answer(context, self._state.ping, request)


def add_vsp_servicers(state: VspState, server: grpc.aio.Server) -> None:
    """OPI's BridgePortService (Intel's semantics) and the four Vendor services, one server."""
    pb_grpc.add_BridgePortServiceServicer_to_server(BridgePortServicer(state.ports), server)
    vendor_grpc.add_LifeCycleServiceServicer_to_server(LifeCycleServicer(state), server)
    vendor_grpc.add_NetworkFunctionServiceServicer_to_server(NetworkFunctionServicer(state), server)
    vendor_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(state), server)
    vendor_grpc.add_HeartbeatServiceServicer_to_server(HeartbeatServicer(state), server)
