"""Simulated kernel for SR-IOV: a count written to a PF's sriov_numvfs in a FakeSysfs becomes VFs.

The real kernel acts inside the write; a file in a fake tree cannot, so SimKernel polls every
PF's `sriov_numvfs` (every ~20 ms, as an asyncio task) and applies a count that differs from
the VFs present with `FakeSysfs.set_num_vfs`. A value is applied only once it reads the same
twice in a row, so the usual "0, then N" (written back to back by another thread) ends with
N VFs even when a poll falls between the two writes. A value the kernel would refuse (not a
number, beyond sriov_totalvfs) is recorded in `refused` and the file shows the present count
again, as it would after the failed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType

from xpu_bridge.sim.sysfs import FakeSysfs, PfHandle

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class NumVfsWrite:
    """One count the kernel took (applied) or refused for a PF, as written."""

    pf: str
    value: str


class SimKernel:
    """Watches the sriov_numvfs files of `sysfs`'s PFs while started (also as `async with`)."""

    def __init__(self, sysfs: FakeSysfs, interval: float = POLL_SECONDS) -> None:
        self.sysfs = sysfs
        self.interval = interval
        self.applied: list[NumVfsWrite] = []
        self.refused: list[NumVfsWrite] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, str] = {}  # PF address -> a new value seen once

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-kernel")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> SimKernel:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.interval)

    def poll(self) -> None:
        """One look at every SR-IOV PF; a value seen the same twice in a row is applied."""
        for pf in self.sysfs.pfs:
            if not pf.total_vfs:
                continue
            try:
                value = (pf.path / "sriov_numvfs").read_text().strip()
            except OSError:
                continue
            present = len(self.sysfs.vfs(pf))
            if value == str(present):
                self._pending.pop(pf.address, None)
                continue
            if self._pending.get(pf.address) != value:
                self._pending[pf.address] = value  # apply it on the next poll if it stays
                continue
            del self._pending[pf.address]
            self._apply(pf, value, present)

    def _apply(self, pf: PfHandle, value: str, present: int) -> None:
        count = int(value) if value.isdigit() else -1
        if not 0 <= count <= pf.total_vfs:
            log.warning("sim kernel: %s: refused sriov_numvfs %r", pf.address, value)
            self.refused.append(NumVfsWrite(pf.address, value))
            (pf.path / "sriov_numvfs").write_text(f"{present}\n")
            return
        self.sysfs.set_num_vfs(pf, count)
        self.applied.append(NumVfsWrite(pf.address, value))
        log.info("sim kernel: %s: %d VF(s) (were %d)", pf.address, count, present)
