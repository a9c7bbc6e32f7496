"""`xpu-bridge run` as a subprocess, for the tests that kill it or measure it: each start logs
to its own file (a file, not a pipe nobody reads: the daemon logs a lot)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from simnode import Node

from xpu_bridge.sim.kubelet import SimKubelet

READY_TIMEOUT = 30.0


async def all_healthy(
    kubelet: SimKubelet,
    capacity: dict[str, int],
    after: float = 0.0,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Every pool registered (at or after `after`), with `capacity[pool]` devices all Healthy."""
    for resource, count in capacity.items():
        await kubelet.wait_registered(resource, after=after, timeout=timeout)
        await kubelet.wait_for_devices(
            resource,
            lambda ds, n=count: len(ds) == n and all(d.health == "Healthy" for d in ds),
            timeout=timeout,
        )


class DaemonProcess:
    """The node's daemon as a subprocess; `start` returns once every pool of `capacity` is
    registered again with all its devices healthy, within `ready_timeout` seconds."""

    ready_timeout = READY_TIMEOUT

    def __init__(self, node: Node, capacity: dict[str, int]) -> None:
        self.node = node
        self.capacity = capacity
        self.process: asyncio.subprocess.Process | None = None
        self.logs: list[Path] = []

    @property
    def log(self) -> Path:
        """The log of the latest start."""
        return self.logs[-1]

    async def start(self) -> None:
        after = time.monotonic()
        log = self.node.root / f"daemon-{len(self.logs):02d}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.node.run_command(), stdout=asyncio.subprocess.DEVNULL, stderr=out
            )
        ready = asyncio.create_task(
            all_healthy(self.node.kubelet, self.capacity, after, self.ready_timeout)
        )
        exited = asyncio.create_task(self.process.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if not ready.done():
            ready.cancel()
            raise AssertionError(
                f"daemon exited {self.process.returncode} before it was ready:\n" + self.log_tail()
            )
        ready.result()

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM; its exit code (also if it had exited already), or None if it had to be
        killed or never ran."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()
            return None

    def log_text(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}" for path in self.logs
        )

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
