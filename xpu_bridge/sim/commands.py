"""CLI commands the simulators contribute: `simulate` and `sim-agent` (entry points)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine

from xpu_bridge.cli import UsageError, stop_on_signals
from xpu_bridge.common.addresses import parse_host_port, unix_socket_path
from xpu_bridge.config import DPU_VENDOR_PLUGIN, OPI_EVPN_BRIDGE


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "simulate",
        help="run xpu-bridge on a simulated node (kubelet, host agent, sysfs) and show pods",
    )
    parser.add_argument(
        "--duration",
        type=_non_negative,
        default=0.0,
        help="keep the node running this many seconds after the table (default 0: exit)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the node's temporary directory")
    _add_api(parser)
    parser.set_defaults(handler=simulate_command, log_level_default="warning")


async def simulate_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.scenario import simulate

    return await simulate(
        args.duration, sys.stdout, stop_on_signals(), keep=args.keep, api=args.api
    )


def add_sim_agent(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sim-agent", help="run the simulated OPI host agent alone (for manual tests)"
    )
    parser.add_argument(
        "--listen", required=True, help="unix:///path/agent.sock or host:port to serve on"
    )
    parser.add_argument(
        "--bridge",
        action="append",
        default=None,
        help="logical bridge to pre-create (repeatable; default: red, blue-a, blue-b, green)",
    )
    parser.add_argument("--up-delay", type=_non_negative, default=0.02)
    parser.add_argument(
        "--interfaces",
        type=int,
        default=3,
        help="dpu-vendor-plugin: ports it can hold at once (the Intel IPU plugin has 3)",
    )
    _add_api(parser)
    parser.set_defaults(handler=sim_agent_command)


async def sim_agent_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.host_agent import serve_host_agent
    from xpu_bridge.sim.vendor_plugin import serve_vendor_plugin

    bridges = args.bridge or [
        f"//network.opiproject.org/bridges/{name}" for name in ("red", "blue-a", "blue-b", "green")
    ]
    if unix_socket_path(args.listen) is None:
        try:
            parse_host_port(args.listen)
        except ValueError:
            raise UsageError(
                f"--listen: {args.listen!r} must be unix:///path or host:port"
            ) from None
    stop = stop_on_signals()
    if args.api == DPU_VENDOR_PLUGIN:
        serving: Coroutine[object, object, None] = serve_vendor_plugin(
            args.listen,
            interfaces=args.interfaces,
            on_started=lambda plugin: print(
                f"sim-agent (dpu-vendor-plugin) serving on {plugin.target}", flush=True
            ),
        )
    else:
        serving = serve_host_agent(
            args.listen,
            bridges,
            args.up_delay,
            on_started=lambda agent: print(f"sim-agent serving on {agent.target}", flush=True),
        )
    server = asyncio.create_task(serving)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    server.cancel()
    waiter.cancel()
    await asyncio.gather(server, waiter, return_exceptions=True)
    if server in done and server.exception() is not None:
        raise UsageError(f"--listen: cannot serve on {args.listen}: {server.exception()}")
    return 0


def _add_api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        choices=[OPI_EVPN_BRIDGE, DPU_VENDOR_PLUGIN],
        default=OPI_EVPN_BRIDGE,
        help="which host agent to simulate (hostAgent.api)",
    )
