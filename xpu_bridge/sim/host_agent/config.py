"""Knobs of the simulated agent: delays, component names and upstream quirks to mimic."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_UP_DELAY = 0.02
DEFAULT_DELETE_DELAY = 0.02
# Subscriber names of upstream's config-intel-e2000.yaml for each object kind.
PORT_COMPONENTS: tuple[str, ...] = ("lvm",)
BRIDGE_COMPONENTS: tuple[str, ...] = ("lgm",)


@dataclass
class AgentConfig:
    """Knobs of the simulated agent; mutable at run time (e.g. `agent.config.up_delay = 1`)."""

    up_delay: float = DEFAULT_UP_DELAY
    # Answer Create with the port UP at once, as the Intel IPU plugin does (up_delay unused).
    up_on_create: bool = False
    delete_delay: float = DEFAULT_DELETE_DELAY
    port_components: tuple[str, ...] = PORT_COMPONENTS
    bridge_components: tuple[str, ...] = BRIDGE_COMPONENTS
    strict_ids: bool = True
    # Upstream answers List with NOT_FOUND "Error: key not found" until the first object of
    # that kind was ever created (its index key does not exist yet in the store).
    list_not_found_until_first_create: bool = True
