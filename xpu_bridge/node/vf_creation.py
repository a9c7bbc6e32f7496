"""VF creation: make each configured PF have `numVfs` VFs at start, never under a held VF
(held by any container, under any resource name that PodResources lists).

The kernel changes a PF's VF count only through 0 (write 0, then the new count), which takes
every VF away for a moment, so a PF with a VF that a container holds is left as it is. A
vendor plugin creates VFs itself (DeviceService.SetNumVfs, for its own PF).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from xpu_bridge.common.pci import PCI_ADDRESS
from xpu_bridge.config import Config, PfConfig
from xpu_bridge.hostagent.ports import PortError
from xpu_bridge.node.inventory import Inventory, PhysicalFunction, discover

log = logging.getLogger(__name__)

SetNumVfs = Callable[[int], Awaitable[int]]
APPEAR_TIMEOUT = 30.0
APPEAR_POLL = 0.2


@dataclass(frozen=True, slots=True)
class VfChange:
    """A PF whose VF count differs from its pfs[] entry."""

    where: str
    pf: PhysicalFunction
    current: int
    wanted: int

    def __str__(self) -> str:
        name = f"{self.pf.name} ({self.pf.address})" if self.pf.name else self.pf.address
        return f"pf {name}: {self.current} VF(s), numVfs {self.wanted}"


@dataclass(frozen=True, slots=True)
class VfPlan:
    changes: tuple[VfChange, ...]
    problems: tuple[str, ...]
    unchanged: tuple[str, ...]


def _find(entry: PfConfig, inventory: Inventory) -> PhysicalFunction | None:
    for pf in inventory.pfs:
        if entry.pci_address == pf.address or (entry.pf_name and entry.pf_name == pf.name):
            return pf
    return None


def plan_vfs(config: Config, inventory: Inventory) -> VfPlan:
    """What `pfs` asks for against what sysfs shows; problems name the entry and the fix."""
    changes, problems, unchanged = [], [], []
    for index, entry in enumerate(config.pfs):
        where = f"pfs[{index}] ({entry.label})"
        pf = _find(entry, inventory)
        if pf is None:
            problems.append(f"{where}: no such PF under the sysfs root; check pfName/pciAddress")
        elif pf.total_vfs is None:
            problems.append(f"{where}: {pf.address} has no SR-IOV (no sriov_totalvfs)")
        elif entry.num_vfs > pf.total_vfs:
            problems.append(
                f"{where}: numVfs {entry.num_vfs} is more than the {pf.total_vfs} the PF "
                "supports (sriov_totalvfs)"
            )
        elif (pf.num_vfs or 0) == entry.num_vfs:
            unchanged.append(f"{where}: has {entry.num_vfs} VF(s) as configured")
        else:
            changes.append(VfChange(where, pf, pf.num_vfs or 0, entry.num_vfs))
    return VfPlan(tuple(changes), tuple(problems), tuple(unchanged))


class VfCreator:
    """Applies a plan through the vendor plugin or by writing sriov_numvfs in sysfs."""

    def __init__(self, sysfs_root: Path, set_num_vfs: SetNumVfs | None = None) -> None:
        self._root = sysfs_root
        self._set_num_vfs = set_num_vfs

    async def apply(self, plan: VfPlan, inventory: Inventory, held: set[str] | None) -> int:
        """Change every PF of the plan that no container holds a VF of (`held`: None when
        PodResources cannot tell, which leaves every PF that has VFs as it is); returns how
        many changed."""
        for problem in plan.problems:
            log.error("VF creation: %s", problem)
        done: list[VfChange] = []
        for change in plan.changes:
            holders = sorted(
                d.id
                for d in inventory.devices
                if d.kind == "vf" and d.pf_address == change.pf.address and held and d.id in held
            )
            if change.current and (held is None or holders):
                why = (
                    "PodResources cannot tell who holds its VFs"
                    if held is None
                    else (f"containers hold its VF(s) {', '.join(holders)}")
                )
                log.error("VF creation: %s: %s: left as it is: %s", change.where, change, why)
                continue
            try:
                await self._change(change)
            except (PortError, OSError, ValueError) as error:
                cause = error.strerror if isinstance(error, OSError) and error.strerror else error
                log.error(
                    "VF creation: %s: %s: failed: %s (is /sys mounted writable?)",
                    change.where,
                    change,
                    cause,
                )
                continue
            done.append(change)
        if done:
            await self._wait_for(done)
        return len(done)

    async def _change(self, change: VfChange) -> None:
        if self._set_num_vfs is not None:
            made = await self._set_num_vfs(change.wanted)
            log.info("VF creation: %s: the vendor plugin made %d", change, made)
            if made != change.wanted:
                log.warning("VF creation: %s: asked for %d, got %d", change, change.wanted, made)
            return
        device = self._numvfs_path(change.pf.address)
        await asyncio.to_thread(_write_numvfs, device, change.current, change.wanted)
        log.info("VF creation: %s: wrote %s/sriov_numvfs", change, device)

    def _numvfs_path(self, address: str) -> Path:
        """The PF's device directory under the root; refused if it resolves elsewhere. The
        file in it is opened without following a link (see _write_numvfs)."""
        if not PCI_ADDRESS.match(address):
            raise ValueError(f"{address!r} is not a PCI address")
        root = os.path.realpath(self._root)
        device = os.path.realpath(os.path.join(root, "bus/pci/devices", address))
        if not device.startswith(root.rstrip("/") + "/"):
            raise ValueError(f"PF {address} resolves outside --sysfs-root ({device})")
        return Path(device)

    async def _wait_for(self, changes: list[VfChange]) -> None:
        """The kernel (or the plugin) makes VFs asynchronously: wait until discovery sees
        every count, or give up after APPEAR_TIMEOUT with a warning."""
        deadline = asyncio.get_running_loop().time() + APPEAR_TIMEOUT
        wanted = {change.pf.address: change.wanted for change in changes}
        while True:
            inventory = await asyncio.to_thread(discover, self._root)
            counts = {
                address: sum(
                    1 for d in inventory.devices if d.kind == "vf" and d.pf_address == address
                )
                for address in wanted
            }
            if counts == wanted:
                return
            if asyncio.get_running_loop().time() > deadline:
                log.warning("VF creation: after %.0fs sysfs shows %s", APPEAR_TIMEOUT, counts)
                return
            await asyncio.sleep(APPEAR_POLL)


def _write_numvfs(device: Path, current: int, wanted: int) -> None:
    """Write through a descriptor of the (resolved) device directory, never through a link."""
    folder = os.open(device, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for value in ("0", str(wanted)) if current and wanted else (str(wanted),):
            handle = os.open(
                "sriov_numvfs", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder
            )
            try:
                os.write(handle, value.encode())
            finally:
                os.close(handle)
    finally:
        os.close(folder)
