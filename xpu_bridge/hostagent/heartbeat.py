"""The heartbeat: ask a vendor plugin every few seconds whether it is healthy, and whether it
restarted (it takes Init again), which means it lost the ports it kept in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable

from xpu_bridge.common.loops import every, keep_running, loop_time
from xpu_bridge.hostagent.health import AgentHealth
from xpu_bridge.hostagent.ports import HostAgent, PortError

log = logging.getLogger(__name__)


class Heartbeat:
    """Feeds AgentHealth from Ping: unreachable and healthy=false both count as down. Every
    beat also sends Init (a no-op once initialized); a failed beat or a fresh Init tells
    `on_outage` (with whether the agent restarted), so that held ports are made again."""

    def __init__(self, agent: HostAgent, health: AgentHealth, seconds: float) -> None:
        self._agent = agent
        self._health = health
        self._seconds = seconds
        self._healthy: bool | None = None
        self.on_outage: Callable[[bool], None] = lambda restarted: None

    async def beat(self) -> None:
        try:
            fresh = await self._agent.start()
            answer = await self._agent.ping()
        except PortError as error:
            self._health.record(False, loop_time())
            self._changed(False, str(error))
            self.on_outage(False)
            return
        healthy = True if answer is None else answer  # no heartbeat service: Init answered
        self._health.report(healthy, loop_time())
        if fresh:
            log.warning("host agent %s restarted (it took Init again)", self._agent.endpoint)
        if fresh or not healthy:
            self.on_outage(fresh)
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
