"""Command line: `run`, `check-config`, and commands that other packages contribute.

Only argparse and asyncio load at start: each command imports what it needs when it runs, so
`--help` and usage errors answer at once. Exit codes are the same for every command
(README "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from xpu_bridge.common.addresses import parse_host_port
from xpu_bridge.common.version import package_version
from xpu_bridge.logs import setup_logging

if TYPE_CHECKING:
    from xpu_bridge.config import Config
    from xpu_bridge.daemon import DaemonOptions

log = logging.getLogger("xpu_bridge")

COMMAND_GROUP = "xpu_bridge.commands"
EXIT_OK = 0
EXIT_FAILURE = 1  # cannot start or go on: the node, a directory, the host agent
EXIT_USAGE = 2  # a flag or the config is wrong (the config's TLS files and pools included)
EXIT_WARNINGS = 3  # check-config: valid, with warnings (what run logs and runs with)
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the argument, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def existing_dir(flag: str, value: Path) -> Path:
    if not value.is_dir():
        raise UsageError(f"{flag}: {value} is not a directory")
    return value


def sysfs_root(flag: str, value: Path) -> Path:
    from xpu_bridge.paths import sysfs_problem

    problem = sysfs_problem(flag, value)
    if problem is not None:
        raise UsageError(problem)
    return value


def add_daemon_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubelet-dir", type=Path, default=Path("/var/lib/kubelet/device-plugins"))
    parser.add_argument(
        "--pod-resources-socket",
        type=Path,
        default=Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
    )
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"))
    parser.add_argument(
        "--devinfo-dir", type=Path, default=Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="xpu-bridge",
        description="Offer xPU VFs/SFs to the kubelet and attach them to OPI bridge ports.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: info (warning for simulate)",
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument("--version", action="version", version=f"xpu-bridge {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser("run", help="run the node daemon")
    run.add_argument("--config", type=Path, required=True)
    add_daemon_paths(run)
    run.add_argument(
        "--metrics-address",
        default="0.0.0.0:9109",
        help="host:port for /metrics, /healthz, /readyz, /debug/state; '' disables",
    )
    run.add_argument(
        "--debug-state-remote",
        action="store_true",
        help="answer /debug/state (every pod's devices and ports) beyond loopback too",
    )
    run.set_defaults(handler=run_command)

    inventory = commands.add_parser(
        "inventory", help="list every VF/SF sysfs shows, and the pool each would join"
    )
    inventory.add_argument("--config", type=Path, default=None)
    inventory.add_argument("--sysfs-root", type=Path, default=Path("/sys"))
    inventory.add_argument("--json", action="store_true", help="one JSON document")
    inventory.set_defaults(handler=inventory_command)

    status = commands.add_parser("status", help="pools, devices and ports of a running daemon")
    status.add_argument("--metrics-address", default="127.0.0.1:9109")
    status.add_argument("--json", action="store_true", help="print /debug/state as it is")
    status.set_defaults(handler=status_command)

    check = commands.add_parser(
        "check-config",
        help="every start-up check of run, without serving (exit 3: valid, with warnings)",
    )
    check.add_argument("--config", type=Path, required=True)
    add_daemon_paths(check)
    check.add_argument(
        "--config-only",
        action="store_true",
        help="check the file alone, not the node (sysfs, directories, kubelet sockets)",
    )
    check.add_argument(
        "--agent", action="store_true", help="also ask the host agent: reachable, bridges there"
    )
    check.add_argument("--agent-timeout", type=float, default=10.0, help="seconds (default 10)")
    check.set_defaults(handler=check_config_command)

    release = commands.add_parser(
        "release", help="ask a running daemon's release hook to free one device now (CNI DEL)"
    )
    release.add_argument("--socket", type=Path, required=True, help="release.hookSocket")
    release.add_argument("device_id", help="PCI address of a VF or auxiliary name of an SF")
    release.set_defaults(handler=release_command)

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def daemon_options(args: argparse.Namespace, config: Config) -> DaemonOptions:
    from xpu_bridge.daemon import DaemonOptions

    if args.metrics_address:
        try:
            parse_host_port(args.metrics_address)
        except ValueError as error:
            raise UsageError(f"--metrics-address: {error}") from None
    return DaemonOptions(
        config=config,
        kubelet_dir=args.kubelet_dir,
        pod_resources_socket=args.pod_resources_socket,
        sysfs_root=sysfs_root("--sysfs-root", args.sysfs_root),
        devinfo_dir=args.devinfo_dir,
        metrics_address=args.metrics_address or None,
        debug_state_remote=args.debug_state_remote,
        config_path=args.config,
    )


async def run_daemon(options: DaemonOptions, stop: asyncio.Event) -> None:
    """Start, serve until `stop` is set, then shut down cleanly. SIGHUP reloads the config
    file; one that comes before the daemon is built is only logged, since the reloader
    compares the file with the running config when it starts anyway."""
    from xpu_bridge.daemon import Daemon

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(
        signal.SIGHUP, log.info, "SIGHUP while starting: the config file is read once serving"
    )
    try:
        daemon = await Daemon.create(options)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        starting = asyncio.create_task(daemon.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()
                log.info("xpu-bridge is serving %d pool(s)", len(daemon.pools))
                await stopping
            log.info("stopping")
        finally:
            loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP while stopping: ignored")
            starting.cancel()
            stopping.cancel()
            await asyncio.gather(starting, stopping, return_exceptions=True)
            await daemon.stop()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_command(args: argparse.Namespace) -> int:
    from xpu_bridge.checks import config_warnings

    config: Config = args.loaded_config
    options = daemon_options(args, config)
    for warning in config_warnings(config):
        log.warning("config %s: %s", args.config, warning)
    await run_daemon(options, stop_on_signals())
    return EXIT_OK


async def check_config_command(args: argparse.Namespace) -> int:
    from xpu_bridge.checks import (
        CheckReport,
        NodePaths,
        check_agent,
        check_config_file,
        check_node,
        describe,
    )

    config: Config = args.loaded_config
    report = CheckReport(lines=[f"config {args.config}: valid"])
    check_config_file(config, report)
    if args.config_only:
        for resource in config.resource_list:
            report.lines.append(f"{config.full_resource_name(resource)}: {describe(resource)}")
    else:
        root = sysfs_root("--sysfs-root", args.sysfs_root)
        paths = NodePaths(args.kubelet_dir, args.pod_resources_socket, root, args.devinfo_dir)
        check_node(config, paths, report)
    if args.agent:
        report.lines.extend(await check_agent(config, args.sysfs_root, args.agent_timeout))
    for line in report.lines:
        print(line)
    for warning in report.warnings:
        print(f"warning: {warning}")
    return report.exit_code


async def inventory_command(args: argparse.Namespace) -> int:
    from xpu_bridge.ops.reports import inventory_report

    config: Config | None = args.loaded_config
    print(inventory_report(sysfs_root("--sysfs-root", args.sysfs_root), config, args.json))
    return EXIT_OK


async def status_command(args: argparse.Namespace) -> int:
    import json

    from xpu_bridge.ops.reports import fetch_state, status_report

    try:
        host, port = parse_host_port(args.metrics_address)
        state = await fetch_state(host, port)
    except (OSError, TimeoutError, ValueError) as error:
        raise UsageError(
            f"--metrics-address: no daemon answers at {args.metrics_address}: {error}; is "
            "`xpu-bridge run` running, and is this its --metrics-address?"
        ) from None
    print(json.dumps(state, indent=2, sort_keys=True) if args.json else status_report(state))
    return EXIT_OK


async def release_command(args: argparse.Namespace) -> int:
    from xpu_bridge.release.hook_socket import request_release

    try:
        result = await request_release(args.socket, args.device_id)
    except (OSError, TimeoutError, ValueError, KeyError) as error:
        raise UsageError(
            f"--socket: no answer from {args.socket}: {error}; is `xpu-bridge run` running "
            "with release.hookSocket set to this path?"
        ) from None
    print(result.message)
    return EXIT_OK if result.released else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or getattr(args, "log_level_default", "info"), args.log_format)
    handler: Handler = args.handler
    from xpu_bridge.common.errors import ProblemsError
    from xpu_bridge.config import ConfigError, load_config

    try:
        # Read before the event loop runs: asyncio.run turns the first Ctrl-C into a
        # cancellation that a long synchronous parse would never see.
        config_path = getattr(args, "config", None)
        args.loaded_config = load_config(config_path) if config_path is not None else None
        return asyncio.run(handler(args))
    except ConfigError as error:
        for problem in error.problems:
            print(f"xpu-bridge: config {getattr(args, 'config', '')}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ProblemsError as error:
        for problem in error.problems:
            print(f"xpu-bridge: cannot start: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    except UsageError as error:
        print(f"xpu-bridge: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"xpu-bridge: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # `python -m xpu_bridge.cli` runs this file as __main__; the commands other modules add
    # raise xpu_bridge.cli's exceptions, so run that module's main, not this copy's.
    from xpu_bridge import cli

    with contextlib.suppress(BrokenPipeError):
        sys.exit(cli.main())
