"""Network functions (DPU side): which device pairs are chained, and chaining or unchaining them.

A container of a network-function pool takes two devices; their ports' MACs, in the order of
the kubelet's device IDs, are the function's input and output. Without a state file the pairs
are rebuilt at start from PodResources (both devices held by one container).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xpu_bridge.common.pci import mac_text
from xpu_bridge.hostagent.ports import NetworkFunctionAgent
from xpu_bridge.node.pool import PoolDevice

log = logging.getLogger(__name__)

DEVICES_PER_FUNCTION = 2


@dataclass(frozen=True, slots=True)
class FunctionPair:
    input_id: str
    output_id: str
    input_mac: str
    output_mac: str

    @classmethod
    def of(cls, first: PoolDevice, second: PoolDevice) -> FunctionPair:
        return cls(first.id, second.id, mac_text(first.spec.mac), mac_text(second.spec.mac))

    def __str__(self) -> str:
        return f"{self.input_id} ({self.input_mac}) -> {self.output_id} ({self.output_mac})"


class NetworkFunctions:
    """The pairs this node has chained; raises PortError when the agent refuses a call."""

    def __init__(self, agent: NetworkFunctionAgent | None) -> None:
        self._agent = agent
        self._pairs: dict[str, FunctionPair] = {}

    def pair_of(self, device_id: str) -> FunctionPair | None:
        return self._pairs.get(device_id)

    def adopt(self, pair: FunctionPair) -> None:
        """Recovery: a pair that PodResources shows one container holding."""
        self._pairs[pair.input_id] = self._pairs[pair.output_id] = pair

    async def chain(self, pair: FunctionPair) -> bool:
        """Create the function unless this pair is chained already; True if this call did."""
        if self._pairs.get(pair.input_id) == pair:
            return False
        if self._agent is None:
            raise RuntimeError("network functions need the dpu-vendor-plugin backend")
        await self._agent.create_network_function(pair.input_mac, pair.output_mac)
        self.adopt(pair)
        log.info("network function %s created", pair)
        return True

    async def unchain(self, device_id: str) -> None:
        """Delete the function `device_id` is part of, if any, before its ports go."""
        pair = self._pairs.get(device_id)
        if pair is None or self._agent is None:
            return
        await self._agent.delete_network_function(pair.input_mac, pair.output_mac)
        self._pairs.pop(pair.input_id, None)
        self._pairs.pop(pair.output_id, None)
        log.info("network function %s deleted", pair)
