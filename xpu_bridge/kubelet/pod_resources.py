"""PodResources client: which devices of our resources the kubelet says containers hold."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from opi_protos.kubelet.podresources.v1 import api_pb2 as pr
from xpu_bridge.common.errors import grpc_status_text

LIST_TIMEOUT = 5.0
LIST_METHOD = "/v1.PodResourcesLister/List"
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""As the kubelet's own PodResources client (pkg/kubelet/apis/podresources/client.go) takes;
gRPC's default of 4 MiB would leave a node with many pods unable to release anything."""


class PodResourcesUnavailable(Exception):
    """The kubelet's PodResources API could not be read; nothing may be released on it."""


@dataclass(frozen=True, slots=True)
class Holder:
    namespace: str
    pod: str
    container: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod} container {self.container}"


@dataclass(frozen=True, slots=True)
class HeldDevices:
    """Per resource, each held device ID and who holds it."""

    by_resource: dict[str, dict[str, Holder]]

    def holder(self, resource: str, device_id: str) -> Holder | None:
        return self.by_resource.get(resource, {}).get(device_id)

    def ids(self, resource: str) -> set[str]:
        return set(self.by_resource.get(resource, {}))

    def all_ids(self) -> set[str]:
        return {device_id for held in self.by_resource.values() for device_id in held}

    def by_holder(self, resource: str) -> dict[Holder, list[str]]:
        """Each container's devices of `resource`, in the order PodResources lists them."""
        grouped: dict[Holder, list[str]] = {}
        for device_id, holder in self.by_resource.get(resource, {}).items():
            grouped.setdefault(holder, []).append(device_id)
        return grouped


class HeldDeviceSource(Protocol):
    """What release needs from the kubelet: who holds which of our devices right now."""

    async def held(self, ours: Callable[[str], bool]) -> HeldDevices: ...


class PodResourcesClient:
    """One channel for the daemon's life; gRPC reconnects by itself after a kubelet restart."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._channel = grpc.aio.insecure_channel(
            f"unix://{socket}", options=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
        )
        # Bytes in, decoded here: gRPC would log a traceback for an answer that does not decode
        # and hand back None instead of raising.
        self._list: grpc.aio.UnaryUnaryMultiCallable[pr.ListPodResourcesRequest, bytes] = (
            self._channel.unary_unary(
                LIST_METHOD, request_serializer=pr.ListPodResourcesRequest.SerializeToString
            )
        )

    async def close(self) -> None:
        await self._channel.close()

    async def held(self, ours: Callable[[str], bool]) -> HeldDevices:
        """Held devices of every resource `ours` accepts (served now, or under our prefix)."""
        try:
            answer = await self._list(pr.ListPodResourcesRequest(), timeout=LIST_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            raise PodResourcesUnavailable(
                f"PodResources List at {self.socket} failed: {grpc_status_text(error)}"
            ) from None
        try:
            reply = pr.ListPodResourcesResponse.FromString(answer)
        except DecodeError as error:
            raise PodResourcesUnavailable(
                f"PodResources List at {self.socket} answered what is not a "
                f"ListPodResourcesResponse: {error}"
            ) from None
        held: dict[str, dict[str, Holder]] = defaultdict(dict)
        for pod in reply.pod_resources:
            for container in pod.containers:
                holder = Holder(pod.namespace, pod.name, container.name)
                for devices in container.devices:
                    if ours(devices.resource_name):
                        for device_id in devices.device_ids:
                            held[devices.resource_name][device_id] = holder
        return HeldDevices(dict(held))
