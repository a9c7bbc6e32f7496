"""Network functions (DPU side): which device pairs are chained, and chaining or unchaining them.

A container of a network-function pool takes two devices; their ports' MACs are the function's
input (the lower device ID) and output. Without a state file the pairs are rebuilt from
PodResources (both devices held by one container).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xpu_bridge.common.pci import mac_text
from xpu_bridge.hostagent.ports import NetworkFunctionAgent, PortError
from xpu_bridge.node.pool import PoolDevice

log = logging.getLogger(__name__)

DEVICES_PER_FUNCTION = 2


@dataclass(frozen=True, slots=True)
class FunctionPair:
    """Input and output of one function: the lower device ID is the input. A fixed order, not
    the kubelet's: its device order is not kept across Allocate, reuse and PodResources, and
    the pair must be the same when it is deleted, even after a restart."""

    input_id: str
    output_id: str
    input_mac: str
    output_mac: str

    @classmethod
    def of(cls, first: PoolDevice, second: PoolDevice) -> FunctionPair:
        low, high = sorted((first, second), key=lambda entry: entry.id)
        return cls(low.id, high.id, mac_text(low.spec.mac), mac_text(high.spec.mac))

    def __str__(self) -> str:
        return f"{self.input_id} ({self.input_mac}) -> {self.output_id} ({self.output_mac})"


class NetworkFunctions:
    """The pairs this node has chained. chain() raises PortError when the agent refuses;
    unchain() never does: a function that cannot be deleted must not keep its ports alive."""

    def __init__(self, agent: NetworkFunctionAgent | None) -> None:
        self._agent = agent
        self._pairs: dict[str, FunctionPair] = {}

    def pair_of(self, device_id: str) -> FunctionPair | None:
        return self._pairs.get(device_id)

    def adopt(self, pair: FunctionPair) -> None:
        """A pair that PodResources shows one container holding (or one we chained)."""
        self._pairs[pair.input_id] = self._pairs[pair.output_id] = pair

    async def chain(self, pair: FunctionPair) -> bool:
        """Create the function unless this pair is chained already; True if this call did."""
        if self._pairs.get(pair.input_id) == pair:
            return False
        if self._agent is None:
            raise PortError("network functions need hostAgent.api dpu-vendor-plugin")
        await self._agent.create_network_function(pair.input_mac, pair.output_mac)
        self.adopt(pair)
        log.info("network function %s created", pair)
        return True

    async def unchain(self, device_id: str) -> None:
        """Delete the function `device_id` is part of, if any, before its ports go."""
        pair = self._pairs.get(device_id)
        if pair is None or self._agent is None:
            return
        try:
            await self._agent.delete_network_function(pair.input_mac, pair.output_mac)
        except PortError as error:
            log.error("network function %s: delete failed: %s; its ports go anyway", pair, error)
        else:
            log.info("network function %s deleted", pair)
        for member in (pair.input_id, pair.output_id):
            if self._pairs.get(member) is pair:  # an Allocate may have chained it anew
                del self._pairs[member]

    async def rechain(self) -> None:
        """After the agent restarted (it lost its functions with its state)."""
        if self._agent is None:
            return
        for pair in set(self._pairs.values()):
            try:
                await self._agent.create_network_function(pair.input_mac, pair.output_mac)
            except PortError as error:
                log.error("network function %s: re-create failed: %s", pair, error)
            else:
                log.warning("network function %s re-created after the agent restarted", pair)
