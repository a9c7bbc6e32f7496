"""Daemon configuration: the YAML/JSON schema, its validation, and path-qualified errors."""

from xpu_bridge.config.base import ConfigError, StrictModel
from xpu_bridge.config.document import API_VERSION, SUPPORTED_API_VERSIONS, Config
from xpu_bridge.config.host_agent import (
    DEFAULT_ENDPOINTS,
    DPU_VENDOR_PLUGIN,
    OPI_EVPN_BRIDGE,
    AgentApi,
    HostAgentConfig,
    ReleaseConfig,
    TLSConfig,
)
from xpu_bridge.config.loading import load_config, parse_config, validation_problems
from xpu_bridge.config.pools import (
    BridgePortConfig,
    PfConfig,
    PfNameSelector,
    ResourceConfig,
    Selector,
    parse_ranges,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_ENDPOINTS",
    "DPU_VENDOR_PLUGIN",
    "OPI_EVPN_BRIDGE",
    "SUPPORTED_API_VERSIONS",
    "AgentApi",
    "BridgePortConfig",
    "Config",
    "ConfigError",
    "HostAgentConfig",
    "PfConfig",
    "PfNameSelector",
    "ReleaseConfig",
    "ResourceConfig",
    "Selector",
    "StrictModel",
    "TLSConfig",
    "load_config",
    "parse_config",
    "parse_ranges",
    "validation_problems",
]
