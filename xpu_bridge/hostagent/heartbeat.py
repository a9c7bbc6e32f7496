"""The heartbeat: ask a vendor plugin every few seconds whether it is healthy."""

from __future__ import annotations

import logging

from xpu_bridge.common.loops import every, keep_running, loop_time
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.ports import HostAgent, PortError

log = logging.getLogger(__name__)


class Heartbeat:
    """Feeds AgentHealth from Ping: unreachable and healthy=false both count as down."""

    def __init__(self, agent: HostAgent, health: AgentHealth, seconds: float) -> None:
        self._agent = agent
        self._health = health
        self._seconds = seconds
        self._healthy: bool | None = None

    async def beat(self) -> None:
        try:
            healthy = await self._agent.ping()
        except PortError as error:
            self._health.record(False, loop_time())
            self._changed(False, str(error))
            return
        self._health.report(healthy, loop_time())
        self._changed(healthy, "it answered healthy=false")

    def _changed(self, healthy: bool, why: str) -> None:
        if healthy == self._healthy:
            return
        if healthy:
            log.info("host agent %s heartbeat: healthy", self._agent.endpoint)
        else:
            log.warning("host agent %s heartbeat: not healthy: %s", self._agent.endpoint, why)
        self._healthy = healthy

    async def run(self) -> None:
        await keep_running("heartbeat", self.beat, every(lambda: self._seconds), step_first=True)
