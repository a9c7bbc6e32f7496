"""The VSP's state behind its services: lifecycle, ports, VFs, network functions, health."""

from __future__ import annotations

import time

from opi_protos.dpu_api import api_pb2
from xpu_bridge.sim.sysfs import FakeSysfs, PfHandle
from xpu_bridge.sim.vendor_plugin.bridge_ports import VspPorts
from xpu_bridge.sim.vendor_plugin.config import VspConfig
from xpu_bridge.sim.vendor_plugin.devices import VfDevices
from xpu_bridge.sim.vendor_plugin.functions import NetworkFunctions
from xpu_bridge.sim.vendor_plugin.lifecycle import LifeCycle


class VspState:
    """Everything one VSP process holds in memory; reset() is what a restart loses."""

    def __init__(self, config: VspConfig, sysfs: FakeSysfs | None, pf: PfHandle | None) -> None:
        self.config = config
        # (method, what) of every port and network-function call, in the order they arrived:
        # the port's name, or "input>output"; like the other records, it survives restarts.
        self.journal: list[tuple[str, str]] = []
        self.lifecycle = LifeCycle(config)
        self.ports = VspPorts(config, lambda: self.lifecycle.initialized, self._note)
        self.devices = VfDevices(config, sysfs, pf)
        self.functions = NetworkFunctions(self._note)
        self.healthy = True

    def _note(self, method: str, what: str) -> None:
        self.journal.append((method, what))

    def ping(self, request: api_pb2.PingRequest) -> api_pb2.PingResponse:
        """Echo the sender's timestamp (now, in Unix nanoseconds, if it sent none)."""
        return api_pb2.PingResponse(
            timestamp=request.timestamp or time.time_ns(),
            responder_id=self.config.responder_id,
            healthy=self.healthy,
        )

    def reset(self) -> None:
        """Ports, the Init flag and live functions go; VFs stay (they live in the kernel),
        and so do the health switch and the request records."""
        self.ports.clear()
        self.lifecycle.reset()
        self.functions.reset()
