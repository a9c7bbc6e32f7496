"""`check-config`: every start-up check `run` makes, in the same order, without serving.

A problem that stops `run` raises the same error here, so both exit with the same code; what
`run` only warns about is a warning line here, and makes `check-config` exit 3.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from xpu_bridge.backends import Backend
from xpu_bridge.common.errors import StartupError
from xpu_bridge.config import Config, ConfigError, ResourceConfig
from xpu_bridge.hostagent.ports import PortError
from xpu_bridge.hostagent.startup import missing_bridge_problems
from xpu_bridge.hostagent.tls import client_certificate_validity, tls_credentials
from xpu_bridge.node.inventory import discover
from xpu_bridge.node.selection import assign
from xpu_bridge.ops.metrics import Metrics
from xpu_bridge.paths import directory_problems

EXIT_WARNINGS = 3


@dataclass(frozen=True, slots=True)
class NodePaths:
    """The paths `run` takes from its flags (same names, same defaults)."""

    kubelet_dir: Path
    pod_resources_socket: Path
    sysfs_root: Path
    devinfo_dir: Path


@dataclass(slots=True)
class CheckReport:
    """What check-config prints: one line per finding, warnings apart."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_WARNINGS if self.warnings else 0


def written_directories(config: Config, kubelet_dir: Path, devinfo_dir: Path) -> dict[str, Path]:
    """The directories the daemon writes into, keyed by the flag or field that names them."""
    directories = {"--kubelet-dir": kubelet_dir, "--devinfo-dir": devinfo_dir}
    if config.release.hook_socket is not None:
        directories["release.hookSocket"] = config.release.hook_socket.parent
    return directories


def config_warnings(config: Config) -> list[str]:
    """Settings that validate but take away a protection; `run` logs these at start."""
    warnings = []
    if config.release.holdoff_seconds == 0:
        warnings.append(
            "release.holdoffSeconds: 0 turns off the hold-off after a kubelet restart, when "
            "PodResources can answer empty for a while and held ports would be deleted; "
            "set it to at least 30 (default 120)"
        )
    return warnings


def empty_pool_warning(name: str, sysfs_root: Path) -> str:
    """One line for a pool that selects nothing: almost always a typo in a selector."""
    return (
        f"{name} selects no device under {sysfs_root}: the kubelet will see 0 of it; compare "
        f"its selectors with `xpu-bridge inventory --sysfs-root {sysfs_root} --config ...`"
    )


def conflict_problems(conflicts: tuple[str, ...]) -> list[str]:
    """Pools that overlap on this node: a config problem, refused at start (exit 2)."""
    return [f"resourceList: {conflict}" for conflict in conflicts]


def describe(resource: ResourceConfig) -> str:
    return f"{resource.device_type}, {resource.bridge_port.describe()}"


def check_config_file(config: Config, report: CheckReport) -> None:
    """What needs no node: TLS files readable and PEM, certificate dates, risky settings."""
    tls = config.host_agent.tls
    if tls is not None:
        tls_credentials(tls)
        validity = client_certificate_validity(tls)
        now = datetime.now(UTC)
        if validity is not None and not validity.not_before <= now <= validity.not_after:
            report.warnings.append(
                f"hostAgent.tls.certFile: {tls.cert_file} is valid from {validity.not_before} to "
                f"{validity.not_after} only, so the agent will refuse it; renew it"
            )
    report.warnings.extend(config_warnings(config))


def check_node(config: Config, paths: NodePaths, report: CheckReport) -> None:
    """The directories, each pool's devices and the kubelet's sockets, as `run` finds them at
    start, on a root that passed `sysfs_problem` (ConfigError or StartupError where `run`
    would stop)."""
    directories = written_directories(config, paths.kubelet_dir, paths.devinfo_dir)
    problems = directory_problems(directories, create=False)
    if problems:
        raise StartupError(problems)
    report.lines.append(f"directories usable: {', '.join(directories)}")
    inventory = discover(paths.sysfs_root)
    report.warnings.extend(f"sysfs: {problem}" for problem in inventory.problems)
    assignment = assign(config, inventory.devices)
    if assignment.conflicts:
        raise ConfigError(conflict_problems(assignment.conflicts))
    for resource in config.resource_list:
        name = config.full_resource_name(resource)
        count = len(assignment.pools.get(name, ()))
        report.lines.append(f"{name}: {count} device(s), {describe(resource)}")
        if count == 0:
            report.warnings.append(empty_pool_warning(name, paths.sysfs_root))
    report.lines.append(f"unmatched: {len(assignment.unmatched)} device(s)")
    sockets = {
        "--kubelet-dir": paths.kubelet_dir / "kubelet.sock",
        "--pod-resources-socket": paths.pod_resources_socket,
    }
    for flag, socket in sockets.items():
        if not socket.is_socket():
            report.warnings.append(
                f"{flag}: no kubelet socket at {socket} (is the kubelet running, and is "
                f"{flag} right?); run waits for it"
            )


async def check_agent(config: Config, sysfs_root: Path, seconds: float) -> list[str]:
    """One round with the host agent, as start-up has it: reachable, its bridges there.
    Unreachable or missing bridges raise StartupError, as they stop `run`."""
    backend = Backend.connect(config, Metrics(), sysfs_root)
    agent = backend.client
    try:
        async with asyncio.timeout(seconds):
            # The heartbeat where there is one: a vendor plugin's Init is the daemon's to give.
            if not agent.capabilities.heartbeat or await agent.ping() is None:
                await agent.start()
            missing = await missing_bridge_problems(agent, config)
    except PortError as error:  # its message names the call, the cause and what to check
        raise StartupError([f"hostAgent.endpoint: {error}"]) from None
    except TimeoutError:
        raise StartupError(
            [
                f"hostAgent.endpoint: {agent.endpoint} did not answer within {seconds:g}s; "
                "check that the agent runs and that hostAgent.endpoint is right"
            ]
        ) from None
    finally:
        await agent.close()
    if missing:
        raise StartupError(missing)
    bridges = sorted({b for r in config.resource_list for b in r.bridge_port.logical_bridges})
    return [f"host agent {agent.endpoint}: reachable, logical bridges present: {len(bridges)}"]
