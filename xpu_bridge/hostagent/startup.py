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


async def wait_until_usable(agent: HostAgent, config: Config) -> None:
    """A missing bridge is a configuration error; an unreachable agent is waited for."""
    names = sorted({b for r in config.resource_list for b in r.bridge_port.logical_bridges})
    while True:
        try:
            await agent.start()
            missing = await agent.missing_logical_bridges(names)
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
            raise MissingBridges(
                [
                    f"logical bridge {name} does not exist on the host agent {agent.endpoint}: "
                    "create it there or fix resourceList[].bridgePort.logicalBridges"
                    for name in missing
                ]
            )
        return
