"""The PodResources v1 API (server_v1.go): List, Get and GetAllocatableResources.

Also the kubelet's ways of looking wrong: List may be empty for a while after a restart, and
terminated pods may still be listed (see PodTable).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import grpc

from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from opi_protos.kubelet.podresources.v1 import api_pb2_grpc as pr_grpc

from .devices import DeviceState
from .model import _Pod
from .pods import PodTable


class PodResourcesLister(pr_grpc.PodResourcesListerServicer):
    """Serves the pods' recorded devices and the healthy devices, as the kubelet knows them."""

    def __init__(self, pods: PodTable, devices: DeviceState, *, get_enabled: bool) -> None:
        self.get_enabled = get_enabled  # the KubeletPodResourcesGet feature gate
        self._pods = pods
        self._devices = devices
        self._empty_until = 0.0

    def empty_for(self, seconds: float) -> None:
        """After a restart: List and Get show no pods until `seconds` have passed."""
        self._empty_until = time.monotonic() + seconds

    async def List(
        self,
        request: pr.ListPodResourcesRequest,
        context: grpc.aio.ServicerContext[pr.ListPodResourcesRequest, pr.ListPodResourcesResponse],
    ) -> pr.ListPodResourcesResponse:
        return pr.ListPodResourcesResponse(
            pod_resources=[_pod_resources(pod) for pod in self._visible_pods()]
        )

    async def GetAllocatableResources(
        self,
        request: pr.AllocatableResourcesRequest,
        context: grpc.aio.ServicerContext[
            pr.AllocatableResourcesRequest, pr.AllocatableResourcesResponse
        ],
    ) -> pr.AllocatableResourcesResponse:
        devices: list[pr.ContainerDevices] = []
        for resource, dev_id, nodes in self._devices.allocatable():
            devices.extend(_container_devices(resource, dev_id, nodes))
        return pr.AllocatableResourcesResponse(devices=devices)

    async def Get(
        self,
        request: pr.GetPodResourcesRequest,
        context: grpc.aio.ServicerContext[pr.GetPodResourcesRequest, pr.GetPodResourcesResponse],
    ) -> pr.GetPodResourcesResponse:
        if not self.get_enabled:
            await context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        for pod in self._visible_pods():
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return pr.GetPodResourcesResponse(pod_resources=_pod_resources(pod))
        # Upstream returns a plain fmt.Errorf, so the code is UNKNOWN, not NOT_FOUND.
        await context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
        )

    def _visible_pods(self) -> list[_Pod]:
        pods = self._pods.listed()
        if time.monotonic() < self._empty_until:
            return []
        return pods


def _pod_resources(pod: _Pod) -> pr.PodResources:
    containers = []
    for container in pod.listed_containers():
        devices: list[pr.ContainerDevices] = []
        for resource, alloc in pod.allocations.get(container.name, {}).items():
            for dev_id in alloc.device_ids:
                devices.extend(_container_devices(resource, dev_id, alloc.numa[dev_id]))
        containers.append(pr.ContainerResources(name=container.name, devices=devices))
    return pr.PodResources(name=pod.name, namespace=pod.namespace, containers=containers)


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
