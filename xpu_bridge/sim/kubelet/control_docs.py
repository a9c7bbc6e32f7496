"""The sim-kubelet control protocol's documents: one JSON line in, one JSON line out.

In: `{"op": "admit", "pod": "web-1", "namespace": "default", "containers": [{"name": "app",
"requests": {"opi.io/red": 1}}]}`, `{"op": "delete", "pod": ..., "namespace": ...}` or
`{"op": "pods"}`. Out: `{"ok": true, ...}` with the answer's fields, or `{"ok": false,
"error": {"kind": ..., "message": ...}}`.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp

from .model import Assignment

ErrorKind = Literal["bad-request", "unknown-resource", "pod-exists", "no-such-pod", "refused"]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "bad-request",
    "unknown-resource",
    "pod-exists",
    "no-such-pod",
    "refused",
)


class ContainerDoc(TypedDict):
    name: str
    requests: dict[str, int]


class AdmitRequest(TypedDict):
    op: Literal["admit"]
    pod: str
    namespace: str
    containers: list[ContainerDoc]


class DeleteRequest(TypedDict):
    op: Literal["delete"]
    pod: str
    namespace: str


class PodsRequest(TypedDict):
    op: Literal["pods"]


Request = AdmitRequest | DeleteRequest | PodsRequest


class ErrorDoc(TypedDict):
    kind: ErrorKind
    message: str
    reason: str
    """The kubelet's reason for a refused admission (UnexpectedAdmissionError), else ""."""


class ErrorAnswer(TypedDict):
    ok: Literal[False]
    error: ErrorDoc


class MountDoc(TypedDict):
    containerPath: str
    hostPath: str
    readOnly: bool


class DeviceNodeDoc(TypedDict):
    containerPath: str
    hostPath: str
    permissions: str


class AllocationDoc(TypedDict):
    """What one container got of one resource: the devices and the plugin's Allocate answer."""

    container: str
    resource: str
    devices: list[str]
    envs: dict[str, str]
    mounts: list[MountDoc]
    deviceNodes: list[DeviceNodeDoc]
    annotations: dict[str, str]


class AdmitAnswer(TypedDict):
    ok: Literal[True]
    pod: str
    namespace: str
    milliseconds: float
    allocations: list[AllocationDoc]


class DeleteAnswer(TypedDict):
    ok: Literal[True]
    pod: str
    namespace: str


class HeldDoc(TypedDict):
    container: str
    resource: str
    devices: list[str]


class PodDoc(TypedDict):
    namespace: str
    name: str
    deleted: bool
    held: list[HeldDoc]


class ResourceDoc(TypedDict):
    name: str
    devices: int
    healthy: int
    socket: str


class PodsAnswer(TypedDict):
    ok: Literal[True]
    resources: list[ResourceDoc]
    pods: list[PodDoc]


Answer = AdmitAnswer | DeleteAnswer | PodsAnswer | ErrorAnswer


def error_answer(kind: ErrorKind, message: str, reason: str = "") -> ErrorAnswer:
    return {"ok": False, "error": {"kind": kind, "message": message, "reason": reason}}


def allocation_doc(item: Assignment) -> AllocationDoc:
    response: dp.ContainerAllocateResponse = item.response
    return {
        "container": item.container,
        "resource": item.resource_name,
        "devices": list(item.device_ids),
        "envs": dict(sorted(response.envs.items())),
        "mounts": [
            {"containerPath": m.container_path, "hostPath": m.host_path, "readOnly": m.read_only}
            for m in response.mounts
        ],
        "deviceNodes": [
            {
                "containerPath": d.container_path,
                "hostPath": d.host_path,
                "permissions": d.permissions,
            }
            for d in response.devices
        ],
        "annotations": dict(sorted(response.annotations.items())),
    }
