"""The `xpu-bridge bench` command (an entry point): flags and their one-line errors.

Loaded at every CLI start (also for `--help`), so at module level this imports only the
standard library and xpu_bridge.cli; the handler imports the bench when it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from xpu_bridge.cli import UsageError

PLOTS_EXTRA = "pip install -e '.[bench]'"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of 1 or more")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if not all(p.strip().isdigit() and int(p) >= 16 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} must be device counts of 16 or more separated by commas, e.g. 256,1024"
        )
    return tuple(sorted({int(p) for p in parts}))


def add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure Allocate latency, scale, churn and CLI start-up on simulated nodes",
        description="Runs every case against simulated nodes (the daemon as a subprocess), "
        "prints a table with each target's verdict; --out writes the JSON document, --plots "
        "PNG plots. About 3.5 minutes on 2 cores; --quick about 1.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs of every case")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON document here")
    parser.add_argument(
        "--plots",
        type=Path,
        default=None,
        help=f"draw PNG plots into this directory ({PLOTS_EXTRA})",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        help="Allocates per agent behaviour (default 1000, --quick 200)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="Allocate runs per agent behaviour, the median one reported (default 3, --quick 2)",
    )
    parser.add_argument(
        "--churn-seconds",
        type=_positive_seconds,
        default=None,
        help="how long the churn case runs (default 60, --quick 6)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="device counts of the scale case (default 256,1024,4096,16384; --quick up to 4096)",
    )
    parser.set_defaults(handler=bench_command, log_level_default="warning")


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported, without importing it (slow) yet."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ImportError:
        return False


async def bench_command(args: argparse.Namespace) -> int:
    if args.plots is not None and not have_matplotlib():
        raise UsageError(f"--plots: matplotlib is not installed; install it with {PLOTS_EXTRA}")
    if args.out is not None and not args.out.parent.is_dir():
        raise UsageError(f"--out: {args.out.parent} is not a directory")
    from xpu_bridge.sim.bench.runner import run_bench
    from xpu_bridge.sim.bench.settings import BenchSettings

    settings = BenchSettings.make(
        quick=args.quick,
        rounds=args.rounds,
        repeats=args.repeats,
        sizes=args.sizes,
        churn_seconds=args.churn_seconds,
        out=args.out,
        plots=args.plots,
    )
    await run_bench(settings)
    return 0
