"""A device plugin endpoint: one pool's DevicePlugin service on its socket in the kubelet dir."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.common.sockets import owner_only, prepare_socket
from xpu_bridge.hostagent.ports import PortAttacher, PortState
from xpu_bridge.kubelet.plugin_server import AllocateObserver, DevicePluginService
from xpu_bridge.node.allocator import Allocator
from xpu_bridge.node.devinfo import DevInfoStore
from xpu_bridge.node.leases import DeviceLeases
from xpu_bridge.node.network_functions import NetworkFunctions
from xpu_bridge.node.pool import DevicePool

AnyHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def socket_name(resource_name: str) -> str:
    """`opi.io/red` -> `xpu-bridge-opi.io-red.sock`, unique per resource in the kubelet dir."""
    return "xpu-bridge-" + re.sub(r"[^A-Za-z0-9._-]", "-", resource_name) + ".sock"


class Undecodable:
    """What a request decodes to when its bytes are no message of its type."""

    def __init__(self, error: DecodeError) -> None:
        self.error = str(error)


def _lenient(decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if decode is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except DecodeError as error:
            return Undecodable(error)

    return deserialize


async def _refuse_undecodable(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(request, Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request does not decode: {request.error}"
        )


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    """A request that does not decode gets INVALID_ARGUMENT naming why; grpc.aio itself would
    answer UNKNOWN with the exception's class and log a traceback. The DevicePlugin service
    has unary and server-streaming methods only; anything else passes as it is. Each
    method's guarded handler is built once: the interceptor runs on every call."""

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[AnyHandler, AnyHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[AnyHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> AnyHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        cached = self._guarded.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guarded(handler)
        self._guarded[handler_call_details.method] = (handler, guarded)
        return guarded


def _guarded(handler: AnyHandler) -> AnyHandler:
    decode, encode = _lenient(handler.request_deserializer), handler.response_serializer
    if handler.unary_unary is not None:
        unary: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await _refuse_undecodable(request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(answer, decode, encode)
    if handler.unary_stream is not None:
        stream: Callable[..., AsyncIterator[Any]] = handler.unary_stream  # type: ignore[assignment]

        async def answers(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await _refuse_undecodable(request, context)
            async for reply in stream(request, context):
                yield reply

        return grpc.unary_stream_rpc_method_handler(answers, decode, encode)
    return handler


class PluginEndpoint:
    """Serves one DevicePluginService on `<kubelet-dir>/<socket>` (mode 0600), restartable."""

    def __init__(self, service: DevicePluginService, kubelet_dir: Path) -> None:
        self.service = service
        self.resource_name = service.pool.resource_name
        self.socket_name = socket_name(self.resource_name)
        self.path = kubelet_dir / self.socket_name
        self._server: grpc.aio.Server | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        prepare_socket(self.path, "device plugin socket", make_parent=False)
        server = grpc.aio.server(interceptors=[RefuseUndecodable()])
        dp_grpc.add_DevicePluginServicer_to_server(self.service, server)
        with owner_only():
            server.add_insecure_port(f"unix://{self.path}")  # binds: the file is 0600 at once
        await server.start()
        self._inode = self.path.stat().st_ino
        self._server = server
        self.service.closing = False

    def socket_intact(self) -> bool:
        """False once the kubelet (or anyone) removed or replaced our socket file."""
        try:
            return self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            return False

    async def stop(self, grace: float | None = 0.5) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self.service.end_streams()
        await server.stop(grace)
        if self.socket_intact():
            self.path.unlink(missing_ok=True)

    async def restart(self) -> None:
        await self.stop(grace=0)
        await self.start()


@dataclass(frozen=True, slots=True)
class EndpointFactory:
    """Makes a pool's endpoint (service and allocator), alike at start and on a reload."""

    kubelet_dir: Path
    attacher: PortAttacher
    devinfo: DevInfoStore
    leases: DeviceLeases
    functions: NetworkFunctions
    observer: AllocateObserver | None = None
    on_attached: Callable[[PortState], None] | None = None
    cdi: bool = False
    """cdi.enabled: Allocate answers vfio VFs as CDI devices."""

    def __call__(self, pool: DevicePool) -> PluginEndpoint:
        allocator = Allocator(
            pool,
            self.attacher,
            self.devinfo,
            self.leases,
            self.functions,
            self.on_attached,
            cdi=self.cdi,
        )
        service = DevicePluginService(pool, allocator, observer=self.observer)
        return PluginEndpoint(service, self.kubelet_dir)
