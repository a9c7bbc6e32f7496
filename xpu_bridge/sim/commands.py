"""CLI commands the simulators contribute: `simulate`, `sim-agent`, `sim-kubelet` (entry points).

Loaded at every CLI start (also for `--help`), so at module level this imports only argparse,
the standard library and xpu_bridge.cli; each handler imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path

from xpu_bridge.cli import UsageError, stop_on_signals

# xpu_bridge.config's OPI_EVPN_BRIDGE and DPU_VENDOR_PLUGIN, written out so that building the
# parser does not import the config schema (tests/test_sim_commands.py keeps them equal).
OPI_EVPN_BRIDGE = "opi-evpn-bridge"
DPU_VENDOR_PLUGIN = "dpu-vendor-plugin"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _resource_count(text: str) -> tuple[str, int]:
    name, sep, count = text.rpartition("=")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be RESOURCE=COUNT with a count of 1 or more, e.g. opi.io/red=1"
        )
    return name, int(count)


def add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "simulate",
        help="run xpu-bridge on a simulated node (kubelet, host agent, sysfs) and show pods",
    )
    parser.add_argument(
        "--duration",
        type=_non_negative,
        default=0.0,
        help="keep the node running this many seconds after the table and print the "
        "operator commands to try against it (default 0: exit)",
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
        "--up-on-create",
        action="store_true",
        help="answer CreateBridgePort with the port UP at once, as the Intel IPU plugin does "
        "(--up-delay then does not apply)",
    )
    parser.add_argument(
        "--interfaces",
        type=int,
        default=3,
        help="dpu-vendor-plugin: ports it can hold at once (the Intel IPU plugin has 3)",
    )
    _add_api(parser)
    parser.set_defaults(handler=sim_agent_command)


async def sim_agent_command(args: argparse.Namespace) -> int:
    from xpu_bridge.common.addresses import parse_host_port, unix_socket_path
    from xpu_bridge.sim.host_agent import serve_host_agent
    from xpu_bridge.sim.node import BRIDGE_NAMES, BRIDGES
    from xpu_bridge.sim.vendor_plugin import serve_vendor_plugin

    bridges = args.bridge or [BRIDGES + name for name in BRIDGE_NAMES]
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
            up_on_create=args.up_on_create,
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


def add_sim_kubelet(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sim-kubelet",
        help="run the simulated kubelet alone, for a real `xpu-bridge run`; admit, delete "
        "and list its pods",
        description="Without a command: serve a simulated kubelet in --dir (Registration, "
        "PodResources and a control socket) until Ctrl-C, and print how to point "
        "`xpu-bridge run` at it. With one: drive the sim-kubelet serving in --dir.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="the sim-kubelet's directory")
    _add_api(parser, "which host agent the config it writes (unless one exists) names")
    parser.set_defaults(handler=sim_kubelet_serve_command)
    actions = parser.add_subparsers(dest="sim_kubelet_command", metavar="{admit,delete,pods}")

    admit = actions.add_parser(
        "admit", help="admit a pod: GetPreferredAllocation and Allocate on the plugins"
    )
    _add_dir(admit)
    admit.add_argument("pod", metavar="POD", help="pod name")
    admit.add_argument(
        "--resource",
        type=_resource_count,
        action="append",
        required=True,
        metavar="RESOURCE=COUNT",
        help="devices the pod's container asks for, e.g. opi.io/red=1 (repeatable)",
    )
    admit.add_argument("--container", default="app", help="the container's name (default app)")
    admit.add_argument("--namespace", default="default")
    admit.add_argument("--json", action="store_true", help="print the answer document")
    admit.set_defaults(handler=sim_kubelet_admit_command)

    delete = actions.add_parser(
        "delete", help="delete a pod: PodResources stops listing it, its devices are free"
    )
    _add_dir(delete)
    delete.add_argument("pod", metavar="POD", help="pod name")
    delete.add_argument("--namespace", default="default")
    delete.set_defaults(handler=sim_kubelet_delete_command)

    pods = actions.add_parser("pods", help="the registered resources and the pods")
    _add_dir(pods)
    pods.add_argument("--json", action="store_true", help="print the answer document")
    pods.set_defaults(handler=sim_kubelet_pods_command)


async def sim_kubelet_serve_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.kubelet_commands import serve

    return await serve(_dir(args), args.api, stop_on_signals())


async def sim_kubelet_admit_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.kubelet_commands import admit

    requests: dict[str, int] = {}
    for name, count in args.resource:
        if name in requests:
            raise UsageError(
                f"--resource: {name} is given twice; give it once, with the total count"
            )
        requests[name] = count
    return await admit(
        _dir(args), args.pod, args.namespace, args.container, requests, as_json=args.json
    )


async def sim_kubelet_delete_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.kubelet_commands import delete

    return await delete(_dir(args), args.pod, args.namespace)


async def sim_kubelet_pods_command(args: argparse.Namespace) -> int:
    from xpu_bridge.sim.kubelet_commands import pods

    return await pods(_dir(args), as_json=args.json)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `sim-kubelet --dir DIR admit ...` keeps the --dir given before the command.
    parser.add_argument(
        "--dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the directory `xpu-bridge sim-kubelet --dir DIR` serves in",
    )


def _dir(args: argparse.Namespace) -> Path:
    if args.dir is None:
        raise UsageError(
            "--dir: missing; name the sim-kubelet's directory, e.g. --dir /tmp/sim-kubelet"
        )
    directory: Path = args.dir
    return directory.absolute()


def _add_api(
    parser: argparse.ArgumentParser, text: str = "which host agent to simulate (hostAgent.api)"
) -> None:
    parser.add_argument(
        "--api", choices=[OPI_EVPN_BRIDGE, DPU_VENDOR_PLUGIN], default=OPI_EVPN_BRIDGE, help=text
    )
