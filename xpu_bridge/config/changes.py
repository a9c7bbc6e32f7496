"""What a new config changes against the running one: pools added, removed or changed, and the
fields that only a restart applies.

Only a restart applies: `mode`, every `hostAgent` field (the channel, its TLS and timeouts,
the port name template), `portIdPrefix` (which ports are ours), `pfs` (VFs are created before
anything is served), `cdi` (how Allocate answers, and where the CDI specs are, which the
kubelet's recorded answers of running pods name) and `release.hookSocket`, and a pool's
`networkFunction`. Everything else
applies to the running daemon: pools added, removed or renamed (`resourcePrefix` included),
their selectors, device type, allocation policy and bridge ports, the rescan interval and
the release timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from xpu_bridge.config.base import ConfigError
from xpu_bridge.config.document import Config
from xpu_bridge.config.loading import validation_problems
from xpu_bridge.config.pools import ResourceConfig

RESTART_ONLY_KEYS = ("mode", "portIdPrefix", "pfs", "cdi")
"""Top-level keys (besides hostAgent, reported field by field) that only a restart applies."""


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """`config` is the new config as it applies now: the restart-only fields keep their
    running values. Pools go by full resource name, in the new config's order."""

    config: Config
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    restart_only: tuple[str, ...]
    """YAML paths of the fields that differ but apply only on restart."""
    applies: bool
    """Whether anything but restart-only fields differs."""

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "; ".join(parts) or "pools unchanged, other settings changed"


def resources_by_name(config: Config) -> dict[str, ResourceConfig]:
    """The config's pools by full resource name (`opi.io/red`), in config order."""
    return {config.full_resource_name(resource): resource for resource in config.resource_list}


def _keep_running_values(
    running: Config, new: Config, doc: dict[str, Any], old: dict[str, Any]
) -> list[str]:
    """Put the running values of restart-only fields into `doc` (the new config, dumped);
    returns the paths of those that differed."""
    differ = [key for key in RESTART_ONLY_KEYS if doc[key] != old[key]]
    doc.update({key: old[key] for key in differ})
    agent = doc["hostAgent"]
    differ += [f"hostAgent.{key}" for key in agent if agent[key] != old["hostAgent"].get(key)]
    doc["hostAgent"] = old["hostAgent"]
    if doc["release"]["hookSocket"] != old["release"]["hookSocket"]:
        differ.append("release.hookSocket")
        doc["release"] = {**doc["release"], "hookSocket": old["release"]["hookSocket"]}
    before = resources_by_name(running)
    resources = []
    pairs = zip(new.resource_list, doc["resourceList"], strict=True)
    for index, (resource, raw) in enumerate(pairs):
        name = new.full_resource_name(resource)
        was = before.get(name)
        if was is not None and was.network_function != resource.network_function:
            differ.append(f"resourceList[{index}].networkFunction ({name})")
            raw = {**raw, "networkFunction": was.network_function}
        resources.append(raw)
    doc["resourceList"] = resources
    return differ


def config_changes(running: Config, new: Config) -> ConfigChanges:
    """Compare; raises ConfigError when the new config, with the running values of its
    restart-only fields, does not validate (a new hostAgent.api with its new bridge ports)."""
    doc = new.model_dump(by_alias=True)
    restart_only = _keep_running_values(running, new, doc, running.model_dump(by_alias=True))
    try:
        config = Config.model_validate(doc)
    except ValidationError as error:
        running_fields = ", ".join(restart_only)
        raise ConfigError(
            [
                f"{problem} (with the running {running_fields}, which only a restart changes)"
                for problem in validation_problems(error)
            ]
        ) from None
    before, after = resources_by_name(running), resources_by_name(config)
    return ConfigChanges(
        config=config,
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(name for name in after if name in before and after[name] != before[name]),
        restart_only=tuple(restart_only),
        applies=config != running,
    )
