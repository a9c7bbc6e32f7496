"""The simulated kernel: what is written to sriov_numvfs becomes the PF's VFs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simnode import eventually

from xpu_bridge.node.inventory import discover
from xpu_bridge.sim.kernel import NumVfsWrite, SimKernel
from xpu_bridge.sim.sysfs import build_node


def write_numvfs(path: Path, *values: int | str) -> None:
    """As xpu-bridge does (in a thread): each value written on its own, back to back."""
    for value in values:
        path.write_text(str(value))


async def test_zero_then_a_count_ends_with_that_many_vfs(tmp_path: Path) -> None:
    sysfs = build_node(tmp_path / "sys", pfs=2, vfs_per_pf=8, sfs_per_pf=0)
    pf0, pf1 = sysfs.pfs
    numvfs = tmp_path / "sys/bus/pci/devices" / pf1.address / "sriov_numvfs"
    async with SimKernel(sysfs) as kernel:
        for count in (12, 3, 16, 0, 5):
            await asyncio.to_thread(write_numvfs, numvfs, 0, count)
            done = NumVfsWrite(pf1.address, str(count))
            await eventually(lambda d=done: kernel.applied and kernel.applied[-1] == d)
            await asyncio.sleep(5 * kernel.interval)  # and it stays so
            assert sorted(sysfs.vfs(pf1)) == list(range(count))
            assert numvfs.read_text().strip() == str(count)
    assert len(sysfs.vfs(pf0)) == 8
    assert not kernel.refused
    vfs = [d for d in discover(tmp_path / "sys").devices if d.pf_address == pf1.address]
    assert len(vfs) == 5


async def test_a_count_beyond_totalvfs_is_refused_and_the_file_shows_the_vfs_present(
    tmp_path: Path,
) -> None:
    sysfs = build_node(tmp_path / "sys", pfs=1, vfs_per_pf=4, sfs_per_pf=0, total_vfs=8)
    (pf,) = sysfs.pfs
    numvfs = pf.path / "sriov_numvfs"
    async with SimKernel(sysfs) as kernel:
        numvfs.write_text("9")
        await eventually(lambda: kernel.refused)
        assert kernel.refused == [NumVfsWrite(pf.address, "9")]
        assert numvfs.read_text().strip() == "4"
        assert len(sysfs.vfs(pf)) == 4
        assert not kernel.applied
    numvfs.write_text("2")  # stopped: nobody applies it
    await asyncio.sleep(5 * kernel.interval)
    assert len(sysfs.vfs(pf)) == 4
