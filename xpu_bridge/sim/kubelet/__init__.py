"""Simulated kubelet: device-plugin registration and dial-back, ListAndWatch, pod admission
(GetPreferredAllocation/Allocate), restarts and the PodResources v1 API, as the real one does.

Used only by tests, benchmarks and `xpu-bridge simulate`. Behaviour follows kubernetes/kubernetes
`pkg/kubelet/cm/devicemanager/` (manager.go, endpoint.go, plugin/v1beta1/) and
`pkg/kubelet/apis/podresources/server_v1.go`.
"""

from .model import (
    AdmissionError,
    Assignment,
    Container,
    DeviceView,
    EndpointView,
    PluginCall,
    PodView,
    RegistrationRecord,
)
from .rules import (
    API_VERSION,
    HEALTHY,
    KUBELET_SOCKET,
    PRE_START_TIMEOUT_S,
    UNEXPECTED_ADMISSION_ERROR,
    UNHEALTHY,
    go_status_error,
    is_extended_resource_name,
)
from .server import SimKubelet

__all__ = [
    "API_VERSION",
    "HEALTHY",
    "KUBELET_SOCKET",
    "PRE_START_TIMEOUT_S",
    "UNEXPECTED_ADMISSION_ERROR",
    "UNHEALTHY",
    "AdmissionError",
    "Assignment",
    "Container",
    "DeviceView",
    "EndpointView",
    "PluginCall",
    "PodView",
    "RegistrationRecord",
    "SimKubelet",
    "go_status_error",
    "is_extended_resource_name",
]
