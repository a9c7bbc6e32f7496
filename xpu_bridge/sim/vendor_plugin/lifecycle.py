"""LifeCycleService.Init: one successful Init per process, as upstream's LifeCycleServiceServer."""

from __future__ import annotations

from opi_protos.dpu_api import api_pb2
from xpu_bridge.sim.host_agent.errors import unknown
from xpu_bridge.sim.host_agent.specs import clone
from xpu_bridge.sim.vendor_plugin.config import VspConfig

# Upstream's fmt.Errorf, so gRPC sends it as UNKNOWN.
ALREADY_INITIALIZED = "Error during init call, already initialized"


class LifeCycle:
    """Whether Init was called in this process, and every Init request seen (also refused
    ones). Upstream sets the flag before any other check, so even a failed Init is the one
    Init; the simulator's Init never fails otherwise. Upstream only gets bridge ports ready
    (InitAccApfMacs) in IPU mode (dpu_mode true); here any first Init does."""

    def __init__(self, config: VspConfig) -> None:
        self._config = config
        self.requests: list[api_pb2.InitRequest] = []
        self.initialized = False

    def init(self, request: api_pb2.InitRequest) -> api_pb2.IpPort:
        self.requests.append(clone(request))
        if self.initialized:
            raise unknown(ALREADY_INITIALIZED)
        self.initialized = True
        return api_pb2.IpPort(ip=self._config.init_ip, port=self._config.init_port)

    def reset(self) -> None:
        """A restarted VSP process must be initialized again (the request log stays)."""
        self.initialized = False
