"""Pod admission: picking devices per container and calling the plugins' admission RPCs.

ManagerImpl.Allocate in manager.go without a topology hint: GetPreferredAllocation when
offered, Allocate, then PreStartContainer when asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence, Set

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp

from .changes import Changes
from .devices import DeviceState
from .model import AdmissionError, Assignment, Container, PluginCall, _Allocation, _Pod
from .plugins import PluginRegistry
from .pods import PodTable
from .rules import PRE_START_TIMEOUT_S, go_status_error

CONNECTION_CLOSING = "rpc error: code = Canceled desc = grpc: the client connection is closing"
"""What grpc-go answers a call whose connection the kubelet closed under it (a restart)."""


class Admission:
    """Admits pods one at a time and records every plugin call it makes."""

    def __init__(
        self, pods: PodTable, devices: DeviceState, plugins: PluginRegistry, changes: Changes
    ) -> None:
        self.plugin_calls: list[PluginCall] = []
        self._pods = pods
        self._devices = devices
        self._plugins = plugins
        self._changes = changes
        self._lock = asyncio.Lock()

    async def admit_pod(
        self,
        name: str,
        namespace: str,
        containers: Sequence[Container],
        init_containers: Sequence[Container],
    ) -> list[Assignment]:
        """Admit a pod container by container, as the device manager does; pods are admitted
        one at a time, so a slow Allocate delays every pod. Raises AdmissionError."""
        async with self._lock:
            pod = self._pods.create(name, namespace, init_containers, containers)
            try:
                await self._allocate_pod(pod)
            except AdmissionError:
                # The pod is rejected (Failed): it is no longer active, its devices are free.
                self._pods.reject(pod)
                self._changes.notify()
                raise
        await self._pre_start(pod)
        return self._pods.assignments(namespace=namespace, pod=name)

    def calls(self, method: str | None = None, resource: str | None = None) -> list[PluginCall]:
        return [
            c
            for c in self.plugin_calls
            if method in (None, c.method) and resource in (None, c.resource_name)
        ]

    async def _allocate_pod(self, pod: _Pod) -> None:
        """ManagerImpl.Allocate for each container: init containers first, their devices
        become reusable by later containers unless they are sidecars."""
        reusable: dict[str, set[str]] = {}
        for container in pod.init_containers:
            await self._allocate_container(pod, container, reusable)
            for resource, alloc in pod.allocations.get(container.name, {}).items():
                if container.sidecar:
                    reusable.setdefault(resource, set()).difference_update(alloc.device_ids)
                else:
                    reusable.setdefault(resource, set()).update(alloc.device_ids)
        for container in pod.containers:
            await self._allocate_container(pod, container, reusable)
            for resource, alloc in pod.allocations.get(container.name, {}).items():
                reusable.setdefault(resource, set()).difference_update(alloc.device_ids)

    async def _allocate_container(
        self, pod: _Pod, container: Container, reusable: dict[str, set[str]]
    ) -> None:
        """allocateContainerResources: pick devices, call Allocate, record on success."""
        for resource, count in container.requests.items():
            if count <= 0:
                continue
            devices = await self._devices_to_allocate(
                pod, container, resource, count, reusable.get(resource, set())
            )
            response = await self._call_allocate(pod, container, resource, devices)
            if pod.linger_until is not None:
                raise AdmissionError(
                    f"pod {pod.namespace}/{pod.name} was deleted during admission", "Deleted"
                )
            pod.allocations.setdefault(container.name, {})[resource] = _Allocation(
                device_ids=tuple(devices),
                numa=self._devices.numa(resource, devices),
                response=response,
            )
            self._changes.notify()

    async def _devices_to_allocate(
        self, pod: _Pod, container: Container, resource: str, required: int, reusable: set[str]
    ) -> list[str]:
        """devicesToAllocate without a topology hint: reuse first, then ask the plugin's
        preference (if it offers one) and fill up from the available devices."""
        healthy = self._devices.healthy(resource)
        if healthy is None:
            raise _unexpected(f"cannot allocate unregistered device {resource}")
        if not healthy:
            raise _unexpected(
                f"no healthy devices present; cannot allocate unhealthy devices {resource}"
            )
        allocated: list[str] = []
        _take(allocated, sorted(reusable), required)
        if len(allocated) == required:
            return allocated
        needed = required - len(allocated)
        available = healthy - self._pods.held(resource)
        if len(available) < needed:
            raise _unexpected(
                f"requested number of devices unavailable for {resource}. "
                f"Requested: {needed}, Available: {len(available)}"
            )
        preferred = await self._preferred(pod, container, resource, available, allocated, required)
        _take(allocated, [d for d in preferred if d in available], required)
        _take(allocated, sorted(available), required)
        return allocated

    async def _preferred(
        self,
        pod: _Pod,
        container: Container,
        resource: str,
        available: Set[str],
        must_include: list[str],
        size: int,
    ) -> list[str]:
        """callGetPreferredAllocationIfAvailable: only if the plugin's options say so."""
        ep = self._plugins.endpoint(resource)
        if ep is None:
            raise _unexpected(f"endpoint not found in cache for a registered resource: {resource}")
        if not ep.options.get_preferred_allocation_available:
            return []
        request = dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=sorted(available | set(must_include)),
                    must_include_deviceIDs=must_include,
                    allocation_size=size,
                )
            ]
        )
        call = self._record("GetPreferredAllocation", resource, pod, container, request)
        try:
            response = await ep.stub.GetPreferredAllocation(request)
        except grpc.aio.AioRpcError as err:
            call.error = go_status_error(err)
            raise _unexpected(
                f"device plugin GetPreferredAllocation rpc failed with err: {call.error}"
            ) from None
        except asyncio.CancelledError:
            if not self._closed_under(resource, ep):
                raise
            call.error = CONNECTION_CLOSING
            raise _unexpected(
                f"device plugin GetPreferredAllocation rpc failed with err: {call.error}"
            ) from None
        call.response = response
        if not response.container_responses:
            return []
        return list(response.container_responses[0].deviceIDs)

    async def _call_allocate(
        self, pod: _Pod, container: Container, resource: str, devices: list[str]
    ) -> dp.ContainerAllocateResponse:
        """endpoint.allocate: no deadline; an error rejects the pod."""
        ep = self._plugins.endpoint(resource)
        if ep is None:
            raise _unexpected(f"unknown Device Plugin {resource}")
        if ep.stopped:
            raise _unexpected(f"endpoint {resource} has been stopped")
        request = dp.AllocateRequest(
            container_requests=[dp.ContainerAllocateRequest(devices_ids=devices)]
        )
        call = self._record("Allocate", resource, pod, container, request)
        try:
            response = await ep.stub.Allocate(request)
        except grpc.aio.AioRpcError as err:
            call.error = go_status_error(err)
            raise _unexpected(call.error) from None
        except asyncio.CancelledError:
            if not self._closed_under(resource, ep):
                raise
            call.error = CONNECTION_CLOSING
            raise _unexpected(call.error) from None
        call.response = response
        if not response.container_responses:
            raise _unexpected(f"no containers return in allocation response {response}")
        return response.container_responses[0]

    async def _pre_start(self, pod: _Pod) -> None:
        """PreStartContainer before each container starts, if the plugin asked for it. A
        failure is a container start error, not an admission one: it is only recorded."""
        for container in (*pod.init_containers, *pod.containers):
            for resource, alloc in pod.allocations.get(container.name, {}).items():
                ep = self._plugins.endpoint(resource)
                if ep is None or ep.stopped or not ep.options.pre_start_required:
                    continue
                request = dp.PreStartContainerRequest(devices_ids=list(alloc.device_ids))
                call = self._record("PreStartContainer", resource, pod, container, request)
                try:
                    call.response = await ep.stub.PreStartContainer(
                        request, timeout=PRE_START_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError as err:
                    call.error = go_status_error(err)

    def _closed_under(self, resource: str, ep: object) -> bool:
        """Whether a cancelled call was cut by a restart closing its connection (grpc.aio
        cancels the call then), not by a cancellation of the admission itself."""
        task = asyncio.current_task()
        cancelled = task is not None and task.cancelling() > 0
        return self._plugins.endpoint(resource) is not ep and not cancelled

    def _record(
        self, method: str, resource: str, pod: _Pod, container: Container, request: object
    ) -> PluginCall:
        call = PluginCall(
            method=method,
            resource_name=resource,
            namespace=pod.namespace,
            pod=pod.name,
            container=container.name,
            request=request,
            at=time.monotonic(),
        )
        self.plugin_calls.append(call)
        return call


def _unexpected(cause: str) -> AdmissionError:
    """admission.unexpectedAdmissionError, which wraps every device manager error."""
    return AdmissionError(f"Allocate failed due to {cause}, which is unexpected")


def _take(allocated: list[str], candidates: Iterable[str], required: int) -> None:
    """allocateRemainingFrom: append candidates not yet taken until required is reached."""
    for dev_id in candidates:
        if len(allocated) >= required:
            return
        if dev_id not in allocated:
            allocated.append(dev_id)
