"""The README's sample outputs are what the commands print now, so they cannot go stale.

Each sample follows a `<!-- output of: COMMAND (...) -->` line. Only what changes from run to
run is normalised on both sides: timings, temporary paths, loopback ports, and how xpu-bridge
was started (the simulators print commands with the program as it was run).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

from xpu_bridge.sim.operator import program

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xpu_bridge.cli"]
PROGRAM = program(str(ROOT / "xpu_bridge" / "cli.py"))  # what CLI's processes print
WAIT = 60.0


def readme_block(command: str) -> str:
    """The fenced block after `<!-- output of: {command} (`."""
    text = (ROOT / "README.md").read_text()
    marker = f"<!-- output of: {command} ("
    assert marker in text, f"README.md has no sample marked {marker!r}"
    after = text[text.index(marker) :].split("```", 2)
    return after[1].strip("\n")


def normalise(text: str, directory: Path | None = None) -> str:
    text = text.replace(PROGRAM + " ", "xpu-bridge ")
    if directory is not None:
        text = text.replace(str(directory), "/tmp/sim-node")
    text = re.sub(r"/tmp/xpu-sim-[A-Za-z0-9_]+", "/tmp/xpu-sim-XXXXXXXX", text)
    text = re.sub(r"\b\d+ ms\b", "N ms", text)
    text = re.sub(r"\bafter \d+\.\ds\b", "after N.Ns", text)
    text = re.sub(r"\b127\.0\.0\.1:\d+\b", "127.0.0.1:PORT", text)
    return text.rstrip("\n")


def test_the_sample_at_the_top_is_what_simulate_prints() -> None:
    result = subprocess.run(
        [*CLI, "simulate"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert normalise(result.stdout) == normalise(readme_block("xpu-bridge simulate"))


async def read_until(process: asyncio.subprocess.Process, last: str) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith(last):
        raw = await asyncio.wait_for(process.stdout.readline(), WAIT)
        assert raw, f"exited before printing {last!r}: {lines}"
        lines.append(raw.decode().rstrip("\n"))
    return lines


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, err.decode()


async def test_the_operator_commands_sample_is_what_simulate_duration_prints() -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, "simulate", "--duration", "600", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        lines = await read_until(process, "  config ")
    finally:
        await stop(process)
    printed = "\n".join(lines[lines.index("") + 1 :])  # after the table
    printed = printed.split("\n\n", 1)[1]
    sample = readme_block("xpu-bridge simulate --duration 600, after the table")
    assert normalise(printed) == normalise(sample)


async def test_the_sim_kubelet_sample_is_what_it_prints(short_root: Path) -> None:
    directory = short_root / "n"
    process = await asyncio.create_subprocess_exec(
        *CLI, "sim-kubelet", "--dir", str(directory), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        lines = await read_until(process, f"  {PROGRAM} sim-kubelet delete")
    finally:
        await stop(process)
    sample = readme_block("xpu-bridge sim-kubelet --dir /tmp/sim-node")
    assert normalise("\n".join(lines), directory) == normalise(sample)
