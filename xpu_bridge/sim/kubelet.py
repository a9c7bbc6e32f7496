"""Simulated kubelet: device-plugin registration and dial-back, ListAndWatch, pod admission
(GetPreferredAllocation/Allocate), restarts and the PodResources v1 API, as the real one does.

Used only by tests, benchmarks and `xpu-bridge simulate`. Behaviour follows kubernetes/kubernetes
`pkg/kubelet/cm/devicemanager/` (manager.go, endpoint.go, plugin/v1beta1/) and
`pkg/kubelet/apis/podresources/server_v1.go`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import stat
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp
from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
UNEXPECTED_ADMISSION_ERROR = "UnexpectedAdmissionError"
PRE_START_TIMEOUT_S = 30.0  # pluginapi.KubeletPreStartContainerRPCTimeoutInSecs
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; keep a margin

T = TypeVar("T")

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GO_CODE_NAMES = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


# ---------------------------------------------------------------- public data


@dataclass(frozen=True)
class Container:
    """A container of a pod to admit; requests maps resource name to device count."""

    name: str
    requests: dict[str, int] = field(default_factory=dict)
    # An init container with restartPolicy Always: keeps its devices and shows in List.
    sidecar: bool = False


@dataclass(frozen=True)
class DeviceView:
    """One device as the kubelet sees it (health is the kubelet's view, not the plugin's)."""

    id: str
    health: str
    numa_nodes: tuple[int, ...]


@dataclass
class RegistrationRecord:
    """One Register call; `at` is time.monotonic() when it arrived."""

    resource_name: str
    endpoint: str
    version: str
    options: dp.DevicePluginOptions
    at: float
    generation: int
    accepted: bool = False
    connected: bool = False  # dial-back and GetDevicePluginOptions succeeded
    error: str | None = None


@dataclass
class PluginCall:
    """One admission-time RPC to a plugin and its outcome, for tests to inspect."""

    method: str  # "GetPreferredAllocation" | "Allocate" | "PreStartContainer"
    resource_name: str
    namespace: str
    pod: str
    container: str
    request: object
    at: float
    response: object | None = None
    error: str | None = None


@dataclass(frozen=True)
class Assignment:
    """Devices the kubelet has recorded for one container and resource."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]
    response: dp.ContainerAllocateResponse


@dataclass(frozen=True)
class EndpointView:
    """The kubelet's connection to a registered plugin."""

    resource_name: str
    socket_path: str
    options: dp.DevicePluginOptions
    stopped: bool  # ListAndWatch ended; the plugin must register again


class AdmissionError(Exception):
    """Pod admission failed; reason and message as the kubelet puts them in the pod status."""

    def __init__(self, message: str, reason: str = UNEXPECTED_ADMISSION_ERROR) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------- helpers


def is_extended_resource_name(name: str) -> bool:
    """v1helper.IsExtendedResourceName: domain/name, not *kubernetes.io/, quota-name valid."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    parts = f"requests.{name}".split("/")
    if len(parts) != 2:
        return False
    prefix, short = parts
    if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
        return False
    return 0 < len(short) <= 63 and bool(_QUALIFIED_NAME.match(short))


def go_status_error(err: grpc.aio.AioRpcError) -> str:
    """Format a gRPC error the way grpc-go prints it, as it appears in kubelet messages."""
    code = err.code()
    name = _GO_CODE_NAMES.get(code) or "".join(p.capitalize() for p in code.name.split("_"))
    return f"rpc error: code = {name} desc = {err.details() or ''}"


def _unexpected(cause: str) -> AdmissionError:
    """admission.unexpectedAdmissionError, which wraps every device manager error."""
    return AdmissionError(f"Allocate failed due to {cause}, which is unexpected")


def _check_socket_path(path: str) -> str:
    """Unix socket paths over ~107 bytes fail in bind(); catch it early with a clear error."""
    if len(path) >= MAX_SOCKET_PATH:
        raise ValueError(f"unix socket path too long ({len(path)} >= {MAX_SOCKET_PATH}): {path}")
    return path


def _remove_sockets(directory: str) -> list[str]:
    """CleanupPluginDirectory: delete every socket (not files, not dirs) directly in directory."""
    removed: list[str] = []
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(entry.stat(follow_symlinks=True).st_mode):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def _numa_nodes(device: dp.Device) -> tuple[int, ...]:
    return tuple(n.ID for n in device.topology.nodes) if device.HasField("topology") else ()


def _container_devices(
    resource: str, dev_id: str, nodes: Iterable[int]
) -> list[pr.ContainerDevices]:
    """containerDevicesFromResourceDeviceInstances: one entry per device per NUMA node."""
    nodes = list(nodes)
    if not nodes:
        return [pr.ContainerDevices(resource_name=resource, device_ids=[dev_id])]
    return [
        pr.ContainerDevices(
            resource_name=resource,
            device_ids=[dev_id],
            topology=pr.TopologyInfo(nodes=[pr.NUMANode(ID=n)]),
        )
        for n in nodes
    ]


# ---------------------------------------------------------------- internal state


class _RegisterError(Exception):
    """Register failed; the message goes back to the plugin as an UNKNOWN status."""


@dataclass
class _Endpoint:
    resource: str
    socket_path: str
    channel: grpc.aio.Channel
    stub: dp_grpc.DevicePluginStub
    options: dp.DevicePluginOptions
    task: asyncio.Task[None] | None = None
    stopped: bool = False


@dataclass
class _Allocation:
    device_ids: tuple[str, ...]
    numa: dict[str, tuple[int, ...]]
    response: dp.ContainerAllocateResponse


@dataclass
class _Pod:
    uid: str
    name: str
    namespace: str
    init_containers: tuple[Container, ...]
    containers: tuple[Container, ...]
    # container name -> resource -> allocation, filled only after Allocate returns
    allocations: dict[str, dict[str, _Allocation]] = field(default_factory=dict)
    linger_until: float | None = None  # set once deleted: still listed until then

    def listed_containers(self) -> list[Container]:
        """server_v1.go lists sidecar init containers and app containers, not plain inits."""
        return [c for c in self.init_containers if c.sidecar] + list(self.containers)


# ---------------------------------------------------------------- gRPC servicers


class _RegistrationServicer(dp_grpc.RegistrationServicer):
    def __init__(self, kubelet: SimKubelet) -> None:
        self._kubelet = kubelet

    async def Register(
        self, request: dp.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> dp.Empty:
        try:
            await self._kubelet._register(request)
        except _RegisterError as err:
            await context.abort(grpc.StatusCode.UNKNOWN, str(err))
        return dp.Empty()


class _PodResourcesServicer(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: SimKubelet) -> None:
        self._kubelet = kubelet

    async def List(
        self, request: pr.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr.ListPodResourcesResponse:
        return pr.ListPodResourcesResponse(pod_resources=self._kubelet._list_pod_resources())

    async def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr.AllocatableResourcesResponse:
        return pr.AllocatableResourcesResponse(devices=self._kubelet._allocatable_devices())

    async def Get(
        self, request: pr.GetPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr.GetPodResourcesResponse:
        if not self._kubelet.pod_resources_get_enabled:
            await context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        found = self._kubelet._get_pod_resources(request.pod_namespace, request.pod_name)
        if found is None:
            # Upstream returns a plain fmt.Errorf, so the code is UNKNOWN, not NOT_FOUND.
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return pr.GetPodResourcesResponse(pod_resources=found)


# ---------------------------------------------------------------- the kubelet


class SimKubelet:
    """A kubelet's device manager and PodResources server, on real unix sockets."""

    def __init__(
        self,
        kubelet_dir: str | os.PathLike[str],
        pod_resources_socket: str | os.PathLike[str],
        *,
        dial_timeout: float = 10.0,
        dial_back_in_background: bool = False,
        terminated_pod_linger: float = 0.0,
        pod_resources_get_enabled: bool = True,
    ) -> None:
        """dial_back_in_background=True mimics kubelets <= 1.25 (Register returns before the
        dial-back); the default mimics current ones (Register returns after it)."""
        self.kubelet_dir = os.path.abspath(os.fspath(kubelet_dir))
        self.socket_path = _check_socket_path(os.path.join(self.kubelet_dir, KUBELET_SOCKET))
        self.pod_resources_socket = _check_socket_path(
            os.path.abspath(os.fspath(pod_resources_socket))
        )
        self.dial_timeout = dial_timeout
        self.dial_back_in_background = dial_back_in_background
        self.terminated_pod_linger = terminated_pod_linger
        self.pod_resources_get_enabled = pod_resources_get_enabled

        self.registrations: list[RegistrationRecord] = []
        self.plugin_calls: list[PluginCall] = []
        self.generation = 0  # bumped by every restart()

        self._endpoints: dict[str, _Endpoint] = {}
        self._devices: dict[str, dict[str, dp.Device]] = {}  # allDevices
        self._healthy: dict[str, set[str]] = {}  # healthyDevices
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._pr_empty_until = 0.0
        self._reg_server: grpc.aio.Server | None = None
        self._pr_server: grpc.aio.Server | None = None
        self._admit_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Clean stale sockets like the device manager does, then serve both sockets."""
        os.makedirs(self.kubelet_dir, exist_ok=True)
        _remove_sockets(self.kubelet_dir)
        await self._serve_registration()
        await self._serve_pod_resources()

    async def stop(self) -> None:
        """Stop serving and drop every plugin connection; gRPC unlinks the kubelet's own
        sockets, plugin sockets stay."""
        await self._stop_servers()
        await self._drop_endpoints()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def restart(self, pod_resources_empty_for: float = 0.0) -> None:
        """A kubelet restart: plugins lose their connection and their sockets, kubelet.sock
        is re-created, device state is forgotten until plugins register again, assignments
        of running pods survive (checkpoint), and List may be empty for a while."""
        await self._stop_servers()
        await self._drop_endpoints()
        self.generation += 1
        self._devices.clear()
        for resource in self._healthy:  # readCheckpoint: known resource, zero devices
            self._healthy[resource] = set()
        for path in _remove_sockets(self.kubelet_dir):
            log.info("sim kubelet restart removed socket %s", path)
        self._pr_empty_until = time.monotonic() + pod_resources_empty_for
        await self._serve_registration()
        await self._serve_pod_resources()
        self._notify()

    async def _serve_registration(self) -> None:
        server = grpc.aio.server()
        dp_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._reg_server = server

    async def _serve_pod_resources(self) -> None:
        os.makedirs(os.path.dirname(self.pod_resources_socket), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pod_resources_socket)
        server = grpc.aio.server()
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResourcesServicer(self), server)
        server.add_insecure_port(f"unix:{self.pod_resources_socket}")
        await server.start()
        self._pr_server = server

    async def _stop_servers(self) -> None:
        for server in (self._reg_server, self._pr_server):
            if server is not None:
                await server.stop(grace=None)
        self._reg_server = self._pr_server = None

    async def _drop_endpoints(self) -> None:
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for ep in endpoints:
            await self._close_endpoint(ep)

    # ------------------------------------------------------------ registration

    async def _register(self, request: dp.RegisterRequest) -> None:
        """server.Register: validate, then connect (now or in the background)."""
        record = RegistrationRecord(
            resource_name=request.resource_name,
            endpoint=request.endpoint,
            version=request.version,
            options=request.options,
            at=time.monotonic(),
            generation=self.generation,
        )
        self.registrations.append(record)
        try:
            self._validate_registration(request)
        except _RegisterError as err:
            record.error = str(err)
            self._notify()
            raise
        record.accepted = True
        if self.dial_back_in_background:
            self._spawn(self._connect_quietly(record))
            self._notify()
            return
        await self._connect(record)

    @staticmethod
    def _validate_registration(request: dp.RegisterRequest) -> None:
        if request.version != API_VERSION:
            raise _RegisterError(
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{API_VERSION}"]'
            )
        if not is_extended_resource_name(request.resource_name):
            raise _RegisterError(f'the ResourceName "{request.resource_name}" is invalid')

    async def _connect_quietly(self, record: RegistrationRecord) -> None:
        """Background dial-back of old kubelets: failures are only logged."""
        with contextlib.suppress(_RegisterError):
            await self._connect(record)

    async def _connect(self, record: RegistrationRecord) -> None:
        """client.Connect + PluginConnected, then run ListAndWatch in the background."""
        socket_path = posixpath.normpath(f"{self.kubelet_dir}/{record.endpoint}")
        generation = self.generation
        try:
            channel, options = await self._dial(socket_path)
        except _RegisterError as err:
            record.error = str(err)
            log.warning("sim kubelet: %s: %s", record.resource_name, err)
            self._notify()
            raise
        ep = _Endpoint(
            resource=record.resource_name,
            socket_path=socket_path,
            channel=channel,
            stub=dp_grpc.DevicePluginStub(channel),
            options=options,
        )
        if generation != self.generation:  # kubelet restarted meanwhile
            await channel.close()
            raise _RegisterError("kubelet restarted during registration")
        old = self._endpoints.get(ep.resource)
        self._endpoints[ep.resource] = ep
        self._healthy.setdefault(ep.resource, set())
        ep.task = self._spawn(self._watch(ep))
        record.connected = True
        self._notify()
        if old is not None:
            await self._close_endpoint(old)

    async def _dial(self, socket_path: str) -> tuple[grpc.aio.Channel, dp.DevicePluginOptions]:
        """Blocking dial with the kubelet's 10 s timeout, then GetDevicePluginOptions."""
        channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
        try:
            return channel, await self._handshake(channel)
        except BaseException:  # also when a restart cancels the Register call
            await channel.close()
            raise

    async def _handshake(self, channel: grpc.aio.Channel) -> dp.DevicePluginOptions:
        try:
            await asyncio.wait_for(channel.channel_ready(), self.dial_timeout)
        except TimeoutError:
            raise _RegisterError(
                "failed to dial device plugin: context deadline exceeded"
            ) from None
        try:
            return await dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(dp.Empty())
        except grpc.aio.AioRpcError as err:
            raise _RegisterError(
                f"failed to get device plugin options: {go_status_error(err)}"
            ) from None

    async def _watch(self, ep: _Endpoint) -> None:
        """client.Run: every message replaces the device set; when the stream ends the
        resource turns unhealthy and nothing reconnects."""
        try:
            async for response in ep.stub.ListAndWatch(dp.Empty()):
                if self._endpoints.get(ep.resource) is not ep:
                    return
                self._apply_devices(ep.resource, response.devices)
        except grpc.aio.AioRpcError as err:
            log.info("sim kubelet: ListAndWatch of %s ended: %s", ep.resource, err.code())
        finally:
            if self._endpoints.get(ep.resource) is ep:
                ep.stopped = True
                self._healthy[ep.resource] = set()  # markResourceUnhealthy
                log.info("sim kubelet: %s marked unhealthy", ep.resource)
                self._notify()

    def _apply_devices(self, resource: str, devices: Sequence[dp.Device]) -> None:
        """genericDeviceUpdateCallback: the message is the whole set."""
        self._devices[resource] = {d.ID: d for d in devices}
        self._healthy[resource] = {d.ID for d in devices if d.health == HEALTHY}
        self._notify()

    async def _close_endpoint(self, ep: _Endpoint) -> None:
        if ep.task is not None:
            ep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ep.task
        await ep.channel.close()

    async def drop_stream(self, resource: str) -> None:
        """The connection to a plugin broke: its ListAndWatch ends and, as upstream, the
        kubelet marks the resource unhealthy and waits for the plugin to register again."""
        ep = self._endpoints.get(resource)
        if ep is None:
            raise KeyError(resource)
        if ep.task is not None:
            ep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ep.task
        await ep.channel.close()

    # ------------------------------------------------------------ admission

    async def admit_pod(
        self,
        name: str,
        namespace: str = "default",
        containers: Sequence[Container] = (),
        init_containers: Sequence[Container] = (),
    ) -> list[Assignment]:
        """Admit a pod container by container, as the device manager does; pods are admitted
        one at a time, so a slow Allocate delays every pod. Raises AdmissionError."""
        key = (namespace, name)
        async with self._admit_lock:
            self._drop_lingering()
            if key in self._pods:
                raise ValueError(f"pod {namespace}/{name} already exists")
            pod = _Pod(
                uid=str(uuid.uuid4()),
                name=name,
                namespace=namespace,
                init_containers=tuple(init_containers),
                containers=tuple(containers),
            )
            self._pods[key] = pod
            try:
                await self._allocate_pod(pod)
            except AdmissionError:
                # The pod is rejected (Failed): it is no longer active, its devices are free.
                if self._pods.get(key) is pod and pod.linger_until is None:
                    del self._pods[key]
                self._notify()
                raise
        await self._pre_start(pod)
        return self.assignments(namespace=namespace, pod=name)

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
            known = self._devices.get(resource, {})
            numa = {d: _numa_nodes(known[d]) if d in known else () for d in devices}
            pod.allocations.setdefault(container.name, {})[resource] = _Allocation(
                device_ids=tuple(devices), numa=numa, response=response
            )
            self._notify()

    async def _devices_to_allocate(
        self, pod: _Pod, container: Container, resource: str, required: int, reusable: set[str]
    ) -> list[str]:
        """devicesToAllocate without a topology hint: reuse first, then ask the plugin's
        preference (if it offers one) and fill up from the available devices."""
        healthy = self._healthy.get(resource)
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
        available = healthy - self._held(resource)
        if len(available) < needed:
            raise _unexpected(
                f"requested number of devices unavailable for {resource}. "
                f"Requested: {needed}, Available: {len(available)}"
            )
        preferred = await self._preferred(pod, container, resource, available, allocated, required)
        _take(allocated, [d for d in preferred if d in available], required)
        _take(allocated, sorted(available), required)
        return allocated

    def _held(self, resource: str) -> set[str]:
        """allocatedDevices: what containers of active pods hold (this pod's included)."""
        held: set[str] = set()
        for pod in self._pods.values():
            if pod.linger_until is not None:
                continue
            for per_resource in pod.allocations.values():
                if resource in per_resource:
                    held.update(per_resource[resource].device_ids)
        return held

    async def _preferred(
        self,
        pod: _Pod,
        container: Container,
        resource: str,
        available: set[str],
        must_include: list[str],
        size: int,
    ) -> list[str]:
        """callGetPreferredAllocationIfAvailable: only if the plugin's options say so."""
        ep = self._endpoints.get(resource)
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
        call.response = response
        if not response.container_responses:
            return []
        return list(response.container_responses[0].deviceIDs)

    async def _call_allocate(
        self, pod: _Pod, container: Container, resource: str, devices: list[str]
    ) -> dp.ContainerAllocateResponse:
        """endpoint.allocate: no deadline; an error rejects the pod."""
        ep = self._endpoints.get(resource)
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
        call.response = response
        if not response.container_responses:
            raise _unexpected(f"no containers return in allocation response {response}")
        return response.container_responses[0]

    async def _pre_start(self, pod: _Pod) -> None:
        """PreStartContainer before each container starts, if the plugin asked for it. A
        failure is a container start error, not an admission one: it is only recorded."""
        for container in (*pod.init_containers, *pod.containers):
            for resource, alloc in pod.allocations.get(container.name, {}).items():
                ep = self._endpoints.get(resource)
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

    def delete_pod(
        self, name: str, namespace: str = "default", linger: float | None = None
    ) -> None:
        """The pod terminated: its devices are free at once, but PodResources may keep
        listing it for `linger` seconds (default: terminated_pod_linger)."""
        pod = self._pods.get((namespace, name))
        if pod is None or pod.linger_until is not None:
            raise KeyError(f"pod {namespace}/{name} not found")
        linger = self.terminated_pod_linger if linger is None else linger
        pod.linger_until = time.monotonic() + linger
        self._drop_lingering()
        self._notify()

    def _drop_lingering(self) -> None:
        now = time.monotonic()
        for key, pod in list(self._pods.items()):
            if pod.linger_until is not None and pod.linger_until <= now:
                del self._pods[key]

    # ------------------------------------------------------------ PodResources

    def _visible_pods(self) -> list[_Pod]:
        self._drop_lingering()
        if time.monotonic() < self._pr_empty_until:
            return []
        return list(self._pods.values())

    def _pod_resources(self, pod: _Pod) -> pr.PodResources:
        containers = []
        for container in pod.listed_containers():
            devices: list[pr.ContainerDevices] = []
            for resource, alloc in pod.allocations.get(container.name, {}).items():
                for dev_id in alloc.device_ids:
                    devices.extend(_container_devices(resource, dev_id, alloc.numa[dev_id]))
            containers.append(pr.ContainerResources(name=container.name, devices=devices))
        return pr.PodResources(name=pod.name, namespace=pod.namespace, containers=containers)

    def _list_pod_resources(self) -> list[pr.PodResources]:
        return [self._pod_resources(pod) for pod in self._visible_pods()]

    def _get_pod_resources(self, namespace: str, name: str) -> pr.PodResources | None:
        for pod in self._visible_pods():
            if (pod.namespace, pod.name) == (namespace, name):
                return self._pod_resources(pod)
        return None

    def _allocatable_devices(self) -> list[pr.ContainerDevices]:
        """GetAllocatableDevices: known devices that are healthy right now."""
        out: list[pr.ContainerDevices] = []
        for resource, devices in self._devices.items():
            healthy = self._healthy.get(resource, set())
            for dev_id, device in devices.items():
                if dev_id in healthy:
                    out.extend(_container_devices(resource, dev_id, _numa_nodes(device)))
        return out

    # ------------------------------------------------------------ observability

    def devices(self, resource: str) -> list[DeviceView]:
        """The device list of a resource as the kubelet last saw it, sorted by ID."""
        healthy = self._healthy.get(resource, set())
        return [
            DeviceView(
                id=d.ID, health=HEALTHY if d.ID in healthy else UNHEALTHY, numa_nodes=_numa_nodes(d)
            )
            for d in sorted(self._devices.get(resource, {}).values(), key=lambda d: d.ID)
        ]

    def endpoint(self, resource: str) -> EndpointView | None:
        ep = self._endpoints.get(resource)
        if ep is None:
            return None
        return EndpointView(ep.resource, ep.socket_path, ep.options, ep.stopped)

    def assignments(self, namespace: str | None = None, pod: str | None = None) -> list[Assignment]:
        """Devices recorded for containers of active pods (after Allocate returned)."""
        out: list[Assignment] = []
        for p in self._pods.values():
            if p.linger_until is not None or namespace not in (None, p.namespace):
                continue
            if pod not in (None, p.name):
                continue
            for cname, per_resource in p.allocations.items():
                out.extend(
                    Assignment(p.namespace, p.name, cname, res, a.device_ids, a.response)
                    for res, a in per_resource.items()
                )
        return out

    def calls(self, method: str | None = None, resource: str | None = None) -> list[PluginCall]:
        return [
            c
            for c in self.plugin_calls
            if method in (None, c.method) and resource in (None, c.resource_name)
        ]

    async def wait_for_devices(
        self,
        resource: str,
        predicate: Callable[[list[DeviceView]], bool] = bool,
        timeout: float = 10.0,
    ) -> list[DeviceView]:
        """Wait until predicate(devices(resource)) holds (default: any device known)."""

        def check() -> list[DeviceView] | None:
            devices = self.devices(resource)
            return devices if predicate(devices) else None

        return await self._wait(check, timeout, f"devices of {resource}")

    async def wait_registered(
        self, resource: str, after: float = 0.0, timeout: float = 10.0
    ) -> RegistrationRecord:
        """Wait for a registration of resource that arrived at or after `after` (monotonic)
        and whose dial-back succeeded."""

        def check() -> RegistrationRecord | None:
            for record in reversed(self.registrations):
                if record.resource_name == resource and record.at >= after and record.connected:
                    return record
            return None

        return await self._wait(check, timeout, f"registration of {resource}")

    async def _wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            result = check()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"sim kubelet: timed out after {timeout}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        """Keep a reference to background tasks so they are not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _take(allocated: list[str], candidates: Iterable[str], required: int) -> None:
    """allocateRemainingFrom: append candidates not yet taken until required is reached."""
    for dev_id in candidates:
        if len(allocated) >= required:
            return
        if dev_id not in allocated:
            allocated.append(dev_id)
