"""Every process the bench starts: `xpu-bridge run` and `xpu-bridge sim-agent` beside a bench
node, and `xpu-bridge --help` for its wall time. The only module of the bench that starts one;
each argv is this interpreter or the installed console script with fixed flags and paths the
bench made (no shell, nothing from a config or a device).

Each logs to its own file (a file, not a pipe nobody reads); the daemon logs JSON lines, so the
bench can read when the daemon noticed something (`log_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

CLI = [sys.executable, "-m", "xpu_bridge.cli"]
STOP_TIMEOUT = 20.0


class Subprocess:
    """One child process of the bench, its output in `log`."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.command = command
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Spawn it; returns time.monotonic() just before the spawn."""
        started = time.monotonic()
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        return started

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.command[3:5]} was never started")
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def rss_mib(self) -> float:
        """VmRSS from /proc, in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")
        return int(match.group(1)) / 1024

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_events(self, pattern: str, since: float = 0.0) -> list[tuple[float, str]]:
        """(time.time(), message) of the JSON log lines whose message matches `pattern`,
        logged at or after `since` (time.time()); lines that are not JSON are skipped."""
        found = []
        compiled = re.compile(pattern)
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["time"]).timestamp()
                message = str(entry["msg"])
            except (ValueError, KeyError, TypeError):
                continue
            # The log keeps milliseconds: allow for the truncation when comparing.
            if at >= since - 0.001 and compiled.search(message):
                found.append((at, message))
        return found


def daemon_command(root: Path, sysfs: Path) -> list[str]:
    """`xpu-bridge --log-format json run ...` for the node in `root` (see node.NodeFiles)."""
    return [
        *CLI, "--log-format", "json", "run",
        "--config", str(root / "config.yaml"),
        "--kubelet-dir", str(root / "dp"),
        "--pod-resources-socket", str(root / "pr.sock"),
        "--sysfs-root", str(sysfs),
        "--devinfo-dir", str(root / "devinfo"),
        "--metrics-address", "",
    ]  # fmt: skip


async def start_sim_agent(
    root: Path, bridge: str, up_delay: float, up_on_create: bool, timeout: float = 30.0
) -> Subprocess:
    """`xpu-bridge sim-agent` on root/agent.sock, in its own process; returns once it serves."""
    command = [
        *CLI, "--log-level", "warning", "sim-agent",
        "--listen", f"unix://{root}/agent.sock",
        "--bridge", bridge,
        "--up-delay", str(up_delay),
    ]  # fmt: skip
    if up_on_create:
        command.append("--up-on-create")
    agent = Subprocess(command, root / "agent.log")
    await agent.start()
    deadline = time.monotonic() + timeout
    while "serving on" not in agent.tail():
        if agent.exited or time.monotonic() > deadline:
            await agent.stop()
            raise RuntimeError(f"sim-agent did not start:\n{agent.tail()}")
        await asyncio.sleep(0.02)
    return agent


async def wall_time(command: list[str]) -> float:
    """Seconds from spawning `command` (output discarded) until it exited 0."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    code = await process.wait()
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}")
    return elapsed
