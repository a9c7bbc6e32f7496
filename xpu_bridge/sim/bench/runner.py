"""One bench run: the cases in order, the document, the table, the JSON file and the plots."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from xpu_bridge.sim.bench.allocate import run_allocate
from xpu_bridge.sim.bench.churn import run_churn
from xpu_bridge.sim.bench.cli_help import run_help
from xpu_bridge.sim.bench.docs import BenchDocument, Machine
from xpu_bridge.sim.bench.prewarm import run_prewarm
from xpu_bridge.sim.bench.report import render
from xpu_bridge.sim.bench.scale import run_scale
from xpu_bridge.sim.bench.settings import BenchSettings
from xpu_bridge.sim.bench.targets import all_targets

DOCUMENT_VERSION = 1


async def run_bench(settings: BenchSettings, out: TextIO = sys.stdout) -> BenchDocument:
    """Every case, in order; progress lines go to stderr, the table to `out`."""
    # The simulators log every refused call; the bench's own lines say what matters.
    logging.getLogger("xpu_bridge").setLevel(logging.ERROR)
    started, wall = time.monotonic(), datetime.now(UTC)

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    cli_help = await run_help(settings.help_runs)
    say(f"--help: median {cli_help['median_s'] * 1000:.0f} ms")
    allocate = await run_allocate(settings, say)
    prewarm = await run_prewarm(settings, allocate, say)
    scale = await run_scale(settings, say)
    churn = await run_churn(settings, say)
    doc = BenchDocument(
        version=DOCUMENT_VERSION,
        quick=settings.quick,
        started=wall.isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - started, 1),
        machine=Machine(
            python=platform.python_version(),
            cpus=os.cpu_count() or 0,
            platform=platform.platform(),
        ),
        allocate=allocate,
        scale=scale,
        churn=churn,
        cli_help=cli_help,
        prewarm=prewarm,
        targets=all_targets(allocate, scale, churn, cli_help, prewarm),
    )
    print(render(doc), file=out, flush=True)
    if settings.out is not None:
        settings.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {settings.out}", file=out)
    if settings.plots is not None:
        from xpu_bridge.sim.bench.plots import draw

        for path in draw(doc, settings.plots):
            print(f"wrote {path}", file=out)
    return doc
