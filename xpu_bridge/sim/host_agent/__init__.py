"""Simulated OPI host agent: an in-memory opi-evpn-bridge look-alike (BridgePortService,
LogicalBridgeService, health, reflection) with run-time fault injection, for tests and
`xpu-bridge sim-agent`.

Behaviour follows upstream opiproject/opi-evpn-bridge (pkg/port, pkg/bridge, pkg/infradb,
pkg/utils) and einride/aip-go (fieldbehavior, resourceid, resourcename): status codes and
messages are copied so that a client tested here survives the real server.
"""

from xpu_bridge.sim.host_agent.config import (
    BRIDGE_COMPONENTS,
    DEFAULT_DELETE_DELAY,
    DEFAULT_UP_DELAY,
    PORT_COMPONENTS,
    AgentConfig,
)
from xpu_bridge.sim.host_agent.errors import AgentError
from xpu_bridge.sim.host_agent.faults import ALL_METHODS, Faults
from xpu_bridge.sim.host_agent.listener import (
    BRIDGE_PORT_SERVICE,
    LOGICAL_BRIDGE_SERVICE,
    OPI_SERVICES,
    ServerTLS,
)
from xpu_bridge.sim.host_agent.names import (
    BRIDGE_PREFIX,
    PORT_PREFIX,
    bridge_name,
    port_name,
    resource_id,
    validate_resource_name,
    validate_user_settable_id,
)
from xpu_bridge.sim.host_agent.pager import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from xpu_bridge.sim.host_agent.server import SimHostAgent, serve_host_agent

__all__ = [
    "ALL_METHODS",
    "BRIDGE_COMPONENTS",
    "BRIDGE_PORT_SERVICE",
    "BRIDGE_PREFIX",
    "DEFAULT_DELETE_DELAY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_UP_DELAY",
    "LOGICAL_BRIDGE_SERVICE",
    "MAX_PAGE_SIZE",
    "OPI_SERVICES",
    "PORT_COMPONENTS",
    "PORT_PREFIX",
    "AgentConfig",
    "AgentError",
    "Faults",
    "ServerTLS",
    "SimHostAgent",
    "bridge_name",
    "port_name",
    "resource_id",
    "serve_host_agent",
    "validate_resource_name",
    "validate_user_settable_id",
]
