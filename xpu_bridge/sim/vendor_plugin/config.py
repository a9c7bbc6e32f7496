"""Knobs and fixed answers of the simulated VSP: socket path, capacities, Init's IpPort."""

from __future__ import annotations

from dataclasses import dataclass

from opi_protos.dpu_api import api_pb2
from xpu_bridge.sim.host_agent.listener import BRIDGE_PORT_SERVICE

# Where dpu-operator's daemon dials its vendor plugin.
DEFAULT_SOCKET = "/var/run/dpu-daemon/vendor-plugin/vendor-plugin.sock"
DEFAULT_ADDRESS = f"unix://{DEFAULT_SOCKET}"
# Upstream's ACC interfaces for host VFs ("6", "7", "8" in bridgeport.go's `interfaces`).
DEFAULT_INTERFACES = 3
# Upstream's MAX_HOST_VF_CNT.
DEFAULT_MAX_VFS = 16
# What Init answers: where the dpu-operator daemon should listen (xpu-bridge ignores it).
DEFAULT_INIT_IP = "192.168.100.2"
DEFAULT_INIT_PORT = 50151
DEFAULT_RESPONDER_ID = "sim-vsp"
# What kubelet's device plugin API calls a healthy device (pluginapi.Healthy).
HEALTHY = "Healthy"

LIFECYCLE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["LifeCycleService"].full_name
NETWORK_FUNCTION_SERVICE = api_pb2.DESCRIPTOR.services_by_name["NetworkFunctionService"].full_name
DEVICE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name
HEARTBEAT_SERVICE = api_pb2.DESCRIPTOR.services_by_name["HeartbeatService"].full_name
VENDOR_SERVICES: tuple[str, ...] = (
    LIFECYCLE_SERVICE,
    NETWORK_FUNCTION_SERVICE,
    DEVICE_SERVICE,
    HEARTBEAT_SERVICE,
)
# Everything the VSP serves on its one socket (besides health and reflection).
VSP_SERVICES: tuple[str, ...] = (BRIDGE_PORT_SERVICE, *VENDOR_SERVICES)


@dataclass
class VspConfig:
    """Knobs of the simulated VSP; mutable at run time (e.g. `vsp.config.require_init = False`)."""

    interfaces: int = DEFAULT_INTERFACES
    # Upstream refuses Create/DeleteBridgePort until Init has set up the ACC's APFs.
    require_init: bool = True
    max_vfs: int = DEFAULT_MAX_VFS
    init_ip: str = DEFAULT_INIT_IP
    init_port: int = DEFAULT_INIT_PORT
    responder_id: str = DEFAULT_RESPONDER_ID

    def __post_init__(self) -> None:
        if self.interfaces < 0:
            raise ValueError(f"interfaces must be >= 0, got {self.interfaces}")
        if self.max_vfs < 0:
            raise ValueError(f"max_vfs must be >= 0, got {self.max_vfs}")
