"""Simulated dpu-operator vendor-specific plugin (VSP): OPI BridgePortService with Intel IPU
semantics plus dpu-operator's package Vendor services, on one unix socket, with health,
reflection and the opi agent's run-time fault injection; for tests and a CLI command.

Behaviour follows intel/ipu-opi-plugins (ipu-plugin/pkg/ipuplugin: bridgeport.go,
lifecycleservice.go, deviceplugin.go): messages are copied, and every error is a plain Go
error, i.e. gRPC status UNKNOWN, so that a client tested here survives the real VSP.
"""

from xpu_bridge.sim.vendor_plugin.bridge_ports import (
    INVALID_MAC,
    INVALID_VLAN,
    INVALID_VSI,
    NO_INTERFACE,
    NO_VLAN,
    NOT_INITIALIZED,
    go_atoi,
)
from xpu_bridge.sim.vendor_plugin.config import (
    DEFAULT_ADDRESS,
    DEFAULT_INIT_IP,
    DEFAULT_INIT_PORT,
    DEFAULT_INTERFACES,
    DEFAULT_MAX_VFS,
    DEFAULT_RESPONDER_ID,
    DEFAULT_SOCKET,
    HEALTHY,
    VENDOR_SERVICES,
    VSP_SERVICES,
    VspConfig,
)
from xpu_bridge.sim.vendor_plugin.functions import CREATE, DELETE, NfCall
from xpu_bridge.sim.vendor_plugin.lifecycle import ALREADY_INITIALIZED
from xpu_bridge.sim.vendor_plugin.server import SimVendorPlugin, serve_vendor_plugin

__all__ = [
    "ALREADY_INITIALIZED",
    "CREATE",
    "DEFAULT_ADDRESS",
    "DEFAULT_INIT_IP",
    "DEFAULT_INIT_PORT",
    "DEFAULT_INTERFACES",
    "DEFAULT_MAX_VFS",
    "DEFAULT_RESPONDER_ID",
    "DEFAULT_SOCKET",
    "DELETE",
    "HEALTHY",
    "INVALID_MAC",
    "INVALID_VLAN",
    "INVALID_VSI",
    "NOT_INITIALIZED",
    "NO_INTERFACE",
    "NO_VLAN",
    "VENDOR_SERVICES",
    "VSP_SERVICES",
    "NfCall",
    "SimVendorPlugin",
    "VspConfig",
    "go_atoi",
    "serve_vendor_plugin",
]
