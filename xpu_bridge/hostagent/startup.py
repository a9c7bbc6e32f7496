"""Start-up with the host agent: its handshake, then every configured logical bridge exists."""

from __future__ import annotations

import asyncio
import logging

from xpu_bridge.common.errors import StartupError
from xpu_bridge.config import Config
from xpu_bridge.hostagent.ports import HostAgent, PortError

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class MissingBridges(StartupError):
    """Logical bridges the config names that the agent does not have: one line each."""


async def missing_bridge_problems(agent: HostAgent, config: Config) -> list[str]:
    """One line per logical bridge the config names and the agent lacks; raises PortError
    when the agent cannot be asked."""
    names = sorted({b for r in config.resource_list for b in r.bridge_port.logical_bridges})
    return [
        f"logical bridge {name} does not exist on the host agent {agent.endpoint}: "
        "create it there or fix resourceList[].bridgePort.logicalBridges"
        for name in await agent.missing_logical_bridges(names)
    ]


async def wait_until_usable(agent: HostAgent, config: Config) -> None:
    """A missing bridge is a configuration error; an unreachable agent is waited for."""
    while True:
        try:
            await agent.start()
            missing = await missing_bridge_problems(agent, config)
        except PortError as error:
            log.error(
                "host agent %s not usable yet (%s); retrying in %.0fs",
                agent.endpoint,
                error,
                RETRY_SECONDS,
            )
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if missing:
            raise MissingBridges(missing)
        return
