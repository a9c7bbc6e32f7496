"""Kubelet device plugin server: one DevicePlugin gRPC service per pool on its own unix socket."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.allocator import AllocationError, Allocator, ContainerAllocation, UnknownDevice
from xpu_bridge.metrics import Metrics
from xpu_bridge.pool import DevicePool, DeviceView
from xpu_bridge.sockets import remove_stale_socket

log = logging.getLogger(__name__)


def socket_name(resource_name: str) -> str:
    """`opi.io/red` -> `xpu-bridge-opi.io-red.sock`, unique per resource in the kubelet dir."""
    return "xpu-bridge-" + re.sub(r"[^A-Za-z0-9._-]", "-", resource_name) + ".sock"


def _device_message(view: DeviceView) -> dp.Device:
    topology = None
    if view.numa_node is not None:
        topology = dp.TopologyInfo(nodes=[dp.NUMANode(ID=view.numa_node)])
    return dp.Device(ID=view.id, health=view.health, topology=topology)


def _container_response(allocation: ContainerAllocation) -> dp.ContainerAllocateResponse:
    return dp.ContainerAllocateResponse(
        envs=allocation.envs,
        devices=[
            dp.DeviceSpec(
                container_path=node.container_path,
                host_path=node.host_path,
                permissions=node.permissions,
            )
            for node in allocation.device_nodes
        ],
        annotations=allocation.annotations,
    )


class DevicePluginService(dp_grpc.DevicePluginServicer):
    """The kubelet-facing API of one pool; Allocate goes straight to the pool's Allocator."""

    def __init__(
        self,
        pool: DevicePool,
        allocator: Allocator,
        on_stream_lost: Callable[[], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.allocator = allocator
        self._on_stream_lost = on_stream_lost
        self._metrics = metrics
        self.closing = False
        self.active_streams = 0
        self._generation = 0

    async def end_streams(self) -> None:
        """Finish open ListAndWatch streams now, so a server stop need not wait its grace."""
        self.closing = True
        self._generation += 1
        await self.pool.wake_watchers()

    async def GetDevicePluginOptions(
        self, request: dp.Empty, context: grpc.aio.ServicerContext
    ) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(get_preferred_allocation_available=True)

    async def ListAndWatch(
        self, request: dp.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dp.ListAndWatchResponse]:
        log.info("kubelet opened ListAndWatch for %s", self.pool.resource_name)
        self.active_streams += 1
        generation = self._generation
        try:
            async for views in self.pool.watch():
                if generation != self._generation:
                    return
                yield dp.ListAndWatchResponse(devices=[_device_message(v) for v in views])
        finally:
            self.active_streams -= 1
            if not self.closing:
                log.warning("ListAndWatch for %s ended; registering again", self.pool.resource_name)
                self._on_stream_lost()

    async def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> dp.PreferredAllocationResponse:
        responses = []
        for container in request.container_requests:
            if container.allocation_size < 0:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{self.pool.resource_name}: allocation_size {container.allocation_size} < 0",
                )
            picked = self.pool.preferred(
                list(container.available_deviceIDs),
                list(container.must_include_deviceIDs),
                container.allocation_size,
            )
            responses.append(dp.ContainerPreferredAllocationResponse(deviceIDs=picked))
        return dp.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(
        self, request: dp.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> dp.AllocateResponse:
        containers = [list(c.devices_ids) for c in request.container_requests]
        started = time.monotonic()
        result = "failed"
        try:
            allocations = await self.allocator.allocate(containers)
            result = "success"
        except UnknownDevice as error:
            result = "unknown_device"
            log.warning("Allocate %s %s rejected: %s", self.pool.resource_name, containers, error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except AllocationError as error:
            result = "unreachable" if error.unreachable else "failed"
            log.error(
                "Allocate %s %s failed after %.1f ms: %s",
                self.pool.resource_name,
                containers,
                (time.monotonic() - started) * 1000,
                error,
            )
            code = grpc.StatusCode.UNAVAILABLE if error.unreachable else grpc.StatusCode.INTERNAL
            await context.abort(code, f"{self.pool.resource_name}: {error}")
        finally:
            if self._metrics is not None:
                self._metrics.observe_allocate(
                    self.pool.resource_name, result, time.monotonic() - started
                )
        log.info(
            "Allocate %s devices %s ports %s ok in %.1f ms",
            self.pool.resource_name,
            containers,
            sorted({port for a in allocations for port in a.ports}),
            (time.monotonic() - started) * 1000,
        )
        return dp.AllocateResponse(
            container_responses=[_container_response(a) for a in allocations]
        )

    async def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()


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
        remove_stale_socket(self.path, "device plugin socket")
        server = grpc.aio.server()
        dp_grpc.add_DevicePluginServicer_to_server(self.service, server)
        server.add_insecure_port(f"unix://{self.path}")
        await server.start()
        os.chmod(self.path, 0o600)
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
