"""The kubelet's device plugin API for one pool: options, ListAndWatch, preferred pick, Allocate."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from xpu_bridge.node.allocator import (
    AllocationError,
    Allocator,
    ContainerAllocation,
    InvalidRequest,
    UnknownDevice,
    UnusableDevice,
    listed,
)
from xpu_bridge.node.pool import DevicePool, DeviceView

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext
AllocateObserver = Callable[[str, str, float], None]
"""Told (resource, result, seconds) after every Allocate: the metrics."""


def _requested(containers: list[list[str]]) -> str:
    """A request as a log line shows it: the IDs of each container, a few per container."""
    return (
        "["
        + "; ".join(f"[{listed(ids)}]" for ids in containers[:3])
        + (f"; and {len(containers) - 3} more container(s)]" if len(containers) > 3 else "]")
    )


def _device_message(view: DeviceView) -> dp.Device:
    topology = None
    if view.numa_node is not None:
        topology = dp.TopologyInfo(nodes=[dp.NUMANode(ID=view.numa_node)])
    return dp.Device(ID=view.id, health=view.health, topology=topology)


class DeviceMessages:
    """ListAndWatch entries encoded once per device and state: re-sending a pool of 16,384
    after one health change joins cached bytes and parses them once, instead of building
    16,384 messages (issue 11). Bytes, not messages, to keep memory at ~200 B a device:
    serialized messages concatenate into one whose repeated field holds them all."""

    def __init__(self) -> None:
        self._encoded: dict[str, tuple[str, int | None, bytes]] = {}

    def response(self, views: Sequence[DeviceView]) -> dp.ListAndWatchResponse:
        encoded = self._encoded
        parts = []
        for view in views:
            entry = encoded.get(view.id)
            if entry is None or entry[0] != view.health or entry[1] != view.numa_node:
                one = dp.ListAndWatchResponse(devices=[_device_message(view)])
                entry = encoded[view.id] = (view.health, view.numa_node, one.SerializeToString())
            parts.append(entry[2])
        if len(encoded) > len(views) + 64:  # devices that left the pool
            self._encoded = {view.id: encoded[view.id] for view in views}
        return dp.ListAndWatchResponse.FromString(b"".join(parts))


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
        cdi_devices=[dp.CDIDevice(name=name) for name in allocation.cdi_devices],
    )


class DevicePluginService(dp_grpc.DevicePluginServicer):
    """The kubelet-facing API of one pool; Allocate goes straight to the pool's Allocator."""

    def __init__(
        self,
        pool: DevicePool,
        allocator: Allocator,
        on_stream_lost: Callable[[], None] = lambda: None,
        observer: AllocateObserver | None = None,
    ) -> None:
        self.pool = pool
        self.allocator = allocator
        self.on_stream_lost = on_stream_lost
        self._observer = observer
        self.closing = False
        self.active_streams = 0
        self._generation = 0
        self._messages = DeviceMessages()

    async def end_streams(self) -> None:
        """Finish open ListAndWatch streams now, so a server stop need not wait its grace."""
        self.closing = True
        self._generation += 1
        await self.pool.wake_watchers()

    async def GetDevicePluginOptions(
        self, request: dp.Empty, context: Context[dp.Empty, dp.DevicePluginOptions]
    ) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(get_preferred_allocation_available=True)

    async def ListAndWatch(
        self, request: dp.Empty, context: Context[dp.Empty, dp.ListAndWatchResponse]
    ) -> AsyncIterator[dp.ListAndWatchResponse]:
        log.info("kubelet opened ListAndWatch for %s", self.pool.resource_name)
        self.active_streams += 1
        generation = self._generation
        try:
            async for views in self.pool.watch():
                if generation != self._generation:
                    return
                yield self._messages.response(views)
        finally:
            self.active_streams -= 1
            if not self.closing:
                log.warning("ListAndWatch for %s ended; registering again", self.pool.resource_name)
                self.on_stream_lost()

    async def GetPreferredAllocation(
        self,
        request: dp.PreferredAllocationRequest,
        context: Context[dp.PreferredAllocationRequest, dp.PreferredAllocationResponse],
    ) -> dp.PreferredAllocationResponse:
        """Per container: must_include, then prewarmed devices (their port is UP already),
        then the rest, spread or packed (DevicePool.preferred)."""
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
        self, request: dp.AllocateRequest, context: Context[dp.AllocateRequest, dp.AllocateResponse]
    ) -> dp.AllocateResponse:
        containers = [list(c.devices_ids) for c in request.container_requests]
        started = time.monotonic()
        result = "failed"
        try:
            allocations = await self.allocator.allocate(containers)
            result = "success"
        except (InvalidRequest, UnusableDevice) as error:
            result = _refusal(error)
            log.warning(
                "Allocate %s %s rejected: %s",
                self.pool.resource_name,
                _requested(containers),
                error,
            )
            if isinstance(error, UnusableDevice):
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{self.pool.resource_name}: {error}"
                )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except AllocationError as error:
            result = "unreachable" if error.unreachable else "failed"
            log.error(
                "Allocate %s %s failed after %.1f ms: %s",
                self.pool.resource_name,
                _requested(containers),
                (time.monotonic() - started) * 1000,
                error,
            )
            code = grpc.StatusCode.UNAVAILABLE if error.unreachable else grpc.StatusCode.INTERNAL
            await context.abort(code, f"{self.pool.resource_name}: {error}")
        finally:
            if self._observer is not None:
                self._observer(self.pool.resource_name, result, time.monotonic() - started)
        log.info(
            "Allocate %s devices %s ports %s ok in %.1f ms",
            self.pool.resource_name,
            _requested(containers),
            sorted({port for a in allocations for port in a.ports}),
            (time.monotonic() - started) * 1000,
        )
        return dp.AllocateResponse(
            container_responses=[_container_response(a) for a in allocations]
        )

    async def PreStartContainer(
        self,
        request: dp.PreStartContainerRequest,
        context: Context[dp.PreStartContainerRequest, dp.PreStartContainerResponse],
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()


def _refusal(error: Exception) -> str:
    """The `result` label of a refused Allocate."""
    if isinstance(error, UnknownDevice):
        return "unknown_device"
    return "unusable_device" if isinstance(error, UnusableDevice) else "invalid_request"
