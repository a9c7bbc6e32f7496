"""Records the simulated kubelet keeps and shows: pods, containers, devices, plugin calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from opi_protos.kubelet.deviceplugin.v1beta1 import api_pb2 as dp

from .rules import UNEXPECTED_ADMISSION_ERROR

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
class PodView:
    """A pod the kubelet lists; `deleted`: terminated, still listed until its linger time."""

    namespace: str
    name: str
    containers: tuple[str, ...]
    deleted: bool


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


# ---------------------------------------------------------------- internal records


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
