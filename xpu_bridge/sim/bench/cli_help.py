"""`xpu-bridge --help` wall time: a new process each run, as a user starts it."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

from xpu_bridge.sim.bench.docs import HelpCase
from xpu_bridge.sim.bench.processes import wall_time


def help_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m xpu_bridge.cli`."""
    script = Path(sys.executable).parent / "xpu-bridge"
    if script.exists():
        return [str(script), "--help"]
    found = shutil.which("xpu-bridge")
    return [found, "--help"] if found else [sys.executable, "-m", "xpu_bridge.cli", "--help"]


async def run_help(runs: int) -> HelpCase:
    """Median of `runs` runs, process start to exit, after one untimed run (disk cache)."""
    command = help_command()
    await wall_time(command)
    times = [await wall_time(command) for _ in range(runs)]
    return HelpCase(
        command=" ".join(
            Path(command[0]).name if i == 0 else part for i, part in enumerate(command)
        ),
        runs=runs,
        median_s=round(statistics.median(times), 4),
        samples_s=[round(t, 4) for t in times],
    )
