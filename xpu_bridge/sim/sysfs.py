"""Fake sysfs: builds the kernel's PCI, SR-IOV and auxiliary-bus layout under a directory."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

AUTO = "auto"
MELLANOX_OUI = "0c:42:a1"
NET_DRIVERS = frozenset({"mlx5_core"})
SF_DRIVER = "mlx5_core.sf"
_PCI = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$")
_VF_BLOCK_ALIGN = 64
_FIRST_VF_OFFSET = 0x10


@dataclass(frozen=True, slots=True, order=True)
class PciAddress:
    """A PCI function address; `rid` is the 16-bit routing ID SR-IOV uses to place VFs."""

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        match = _PCI.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a PCI address like 0000:3b:00.0")
        domain, bus, device, function = (int(part, 16) for part in match.groups())
        return cls(domain, bus, device, function)

    @classmethod
    def from_rid(cls, domain: int, rid: int) -> PciAddress:
        if not 0 <= rid <= 0xFFFF:
            raise ValueError(f"routing ID {rid:#x} is beyond bus ff")
        return cls(domain, rid >> 8, (rid >> 3) & 0x1F, rid & 0x7)

    @property
    def rid(self) -> int:
        return self.bus << 8 | self.device << 3 | self.function

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"


def vf_address(pf: PciAddress, first_vf_rid: int, index: int) -> PciAddress:
    """VF `index`'s address: routing IDs run on from the first VF, spilling onto later buses."""
    return PciAddress.from_rid(pf.domain, first_vf_rid + index)


def first_vf_rid(pf: PciAddress, next_free: int) -> int:
    """Where a PF's VF block starts: 0x10 past function 0 of its slot, after earlier blocks."""
    return max((pf.rid & ~0x7) + _FIRST_VF_OFFSET, next_free)


def vf_block_size(total_vfs: int) -> int:
    """Routing IDs a PF reserves, rounded to whole 8-function slots x 8 so blocks look tidy."""
    return -(-max(total_vfs, 1) // _VF_BLOCK_ALIGN) * _VF_BLOCK_ALIGN


def pci_mac(address: PciAddress) -> str:
    """A vendor-OUI MAC unique per PCI address, as firmware would assign."""
    return f"{MELLANOX_OUI}:{address.domain & 0xFF:02x}:{address.bus:02x}:{address.rid & 0xFF:02x}"


def sf_mac(name: str) -> str:
    """A locally administered unicast MAC derived from an SF's aux device name."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


@dataclass(frozen=True, slots=True)
class PfHandle:
    """A PF as added; `path` is its device directory, VFs sit beside it."""

    address: str
    ifname: str | None
    path: Path
    vendor: str
    vf_device: str
    numa_node: int
    total_vfs: int
    first_vf_rid: int


@dataclass(frozen=True, slots=True)
class SfHandle:
    """An SF as added; `name` is its auxiliary device name and kubelet device ID."""

    pf: PfHandle
    name: str
    sfnum: int
    ifname: str | None
    path: Path


@dataclass(slots=True)
class _PfState:
    handle: PfHandle
    vfs: dict[int, str] = field(default_factory=dict)
    next_index: int = 0


class FakeSysfs:
    """A writable sysfs tree under `root`; discovery reads it exactly as it reads /sys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pfs: dict[str, _PfState] = {}
        self._sfs: dict[str, SfHandle] = {}
        self._taken: set[str] = set()
        self._next_rid: dict[int, int] = {}
        self._next_group = 1
        self._next_aux_id = 2
        for sub in (
            "bus/pci/devices",
            "bus/pci/drivers",
            "bus/auxiliary/devices",
            "bus/auxiliary/drivers",
            "class/net",
            "kernel/iommu_groups",
            "devices",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def pfs(self) -> tuple[PfHandle, ...]:
        return tuple(state.handle for state in self._pfs.values())

    @property
    def sfs(self) -> tuple[SfHandle, ...]:
        return tuple(self._sfs.values())

    def vfs(self, pf: PfHandle) -> dict[int, str]:
        """Present VFs of `pf`, index to PCI address."""
        return dict(self._pfs[pf.address].vfs)

    def add_pf(
        self,
        address: str,
        ifname: str | None,
        vendor: str = "15b3",
        device: str = "101d",
        vf_device: str = "101e",
        numa_node: int = 0,
        total_vfs: int = 16,
        driver: str | None = "mlx5_core",
        mac: str | None = AUTO,
    ) -> PfHandle:
        """Add an SR-IOV PF (total_vfs > 0) or a plain function (total_vfs 0)."""
        pci = PciAddress.parse(address)
        if address in self._taken:
            raise ValueError(f"{address} is already taken by another function")
        first = first_vf_rid(pci, self._next_rid.get(pci.domain, 0))
        block = [str(vf_address(pci, first, i)) for i in range(total_vfs)]
        clash = self._taken.intersection(block)
        if clash:
            raise ValueError(f"VF addresses of {address} collide with {sorted(clash)[0]}")
        path = self.root / "devices" / f"pci{pci.domain:04x}:{pci.bus:02x}" / address
        self._make_function(path, vendor, device, numa_node, driver)
        if total_vfs:
            _write(path / "sriov_totalvfs", str(total_vfs))
            _write(path / "sriov_numvfs", "0")
            self._next_rid[pci.domain] = first + vf_block_size(total_vfs)
        if ifname is not None and mac is not None:
            self._add_netdev(path, ifname, pci_mac(pci) if mac == AUTO else mac)
        handle = PfHandle(address, ifname, path, vendor, vf_device, numa_node, total_vfs, first)
        self._pfs[address] = _PfState(handle)
        self._taken.update(block, {address})
        return handle

    def add_vfs(
        self, pf: PfHandle, count: int, driver: str | None = "mlx5_core", mac: str | None = AUTO
    ) -> list[str]:
        """Enable `count` more VFs; a netdev (named <pf>v<index>) exists only with a net
        driver and a MAC, as the kernel shows no netdev for unbound or vfio-pci VFs."""
        state = self._pfs[pf.address]
        if state.next_index + count > pf.total_vfs:
            raise ValueError(f"{pf.address} has sriov_totalvfs {pf.total_vfs}")
        pci = PciAddress.parse(pf.address)
        added = []
        for index in range(state.next_index, state.next_index + count):
            vf = vf_address(pci, pf.first_vf_rid, index)
            path = pf.path.parent / str(vf)
            self._make_function(path, pf.vendor, pf.vf_device, pf.numa_node, driver)
            _link(path / "physfn", pf.path)
            _link(pf.path / f"virtfn{index}", path)
            if driver in NET_DRIVERS and mac is not None:
                self._add_netdev(path, _vf_ifname(pf, index), pci_mac(vf) if mac == AUTO else mac)
            state.vfs[index] = str(vf)
            added.append(str(vf))
        state.next_index += count
        _write(pf.path / "sriov_numvfs", str(len(state.vfs)))
        return added

    def remove_vf(self, pf: PfHandle, index: int) -> None:
        """Make one VF vanish, as on hot-unplug or a numvfs change."""
        state = self._pfs[pf.address]
        address = state.vfs.pop(index)
        path = pf.path.parent / address
        self._drop_netdevs(path)
        (pf.path / f"virtfn{index}").unlink()
        (self.root / "bus/pci/devices" / address).unlink()
        shutil.rmtree(path)
        _write(pf.path / "sriov_numvfs", str(len(state.vfs)))

    def set_num_vfs(
        self, pf: PfHandle, count: int, driver: str | None = "mlx5_core", mac: str | None = AUTO
    ) -> list[str]:
        """Write `count` to sriov_numvfs as the kernel takes it: the same count changes
        nothing; any other count tears down every VF (virtfnN links, function directories,
        netdevs) and creates VFs 0..count-1 afresh (their addresses are the same as before).
        Returns the present VFs' addresses."""
        state = self._pfs[pf.address]
        if not 0 <= count <= pf.total_vfs:
            raise ValueError(f"{pf.address}: numvfs {count} is not within 0..{pf.total_vfs}")
        if count != len(state.vfs):
            for index in sorted(state.vfs):
                self.remove_vf(pf, index)
            state.next_index = 0
            self.add_vfs(pf, count, driver=driver, mac=mac)
        return [state.vfs[index] for index in sorted(state.vfs)]

    def set_vf_driver(self, pf: PfHandle, index: int, driver: str | None) -> None:
        """Rebind a VF; its netdev goes away unless the new driver is a net driver."""
        path = pf.path.parent / self._pfs[pf.address].vfs[index]
        (path / "driver").unlink(missing_ok=True)
        if driver is not None:
            _link(path / "driver", self._driver_dir("pci", driver))
        if driver not in NET_DRIVERS:
            self._drop_netdevs(path)
        elif not (path / "net").exists():
            self._add_netdev(path, _vf_ifname(pf, index), pci_mac(PciAddress.parse(path.name)))

    def add_sf(
        self,
        pf: PfHandle,
        sfnum: int,
        ifname: str | None = AUTO,
        mac: str | None = AUTO,
        aux_id: int | None = None,
        driver: str | None = SF_DRIVER,
    ) -> SfHandle:
        """Add a scalable function `mlx5_core.sf.<aux_id>` under `pf`; ifname defaults to
        <pf>s<sfnum>, and ifname or mac None means no netdev."""
        if aux_id is None:
            aux_id = self._next_aux_id
        self._next_aux_id = max(self._next_aux_id, aux_id + 1)
        name = f"mlx5_core.sf.{aux_id}"
        if name in self._sfs:
            raise ValueError(f"{name} already exists")
        path = pf.path / name
        path.mkdir()
        _write(path / "sfnum", str(sfnum))
        if driver is not None:
            _link(path / "driver", self._driver_dir("auxiliary", driver))
        _link(self.root / "bus/auxiliary/devices" / name, path)
        netdev = f"{pf.ifname or 'sf'}s{sfnum}" if ifname == AUTO else ifname
        if netdev is not None and mac is not None:
            self._add_netdev(path, netdev, sf_mac(name) if mac == AUTO else mac)
        handle = SfHandle(pf, name, sfnum, netdev if mac is not None else None, path)
        self._sfs[name] = handle
        return handle

    def remove_sf(self, sf: SfHandle) -> None:
        """Make an SF vanish, as `devlink port del` does."""
        del self._sfs[sf.name]
        self._drop_netdevs(sf.path)
        (self.root / "bus/auxiliary/devices" / sf.name).unlink()
        shutil.rmtree(sf.path)

    def _make_function(
        self, path: Path, vendor: str, device: str, numa_node: int, driver: str | None
    ) -> None:
        path.mkdir(parents=True)
        _write(path / "vendor", f"0x{vendor}")
        _write(path / "device", f"0x{device}")
        _write(path / "numa_node", str(numa_node))
        _write(path / "class", "0x020000")
        if driver is not None:
            _link(path / "driver", self._driver_dir("pci", driver))
        group = self.root / "kernel/iommu_groups" / str(self._next_group)
        group.mkdir()
        _link(path / "iommu_group", group)
        self._next_group += 1
        _link(self.root / "bus/pci/devices" / path.name, path)

    def _driver_dir(self, bus: str, driver: str) -> Path:
        path = self.root / "bus" / bus / "drivers" / driver
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _add_netdev(self, device_path: Path, ifname: str, mac: str) -> None:
        net = device_path / "net" / ifname
        net.mkdir(parents=True)
        _write(net / "address", mac)
        _write(net / "operstate", "up")
        _link(self.root / "class/net" / ifname, net)

    def _drop_netdevs(self, device_path: Path) -> None:
        net = device_path / "net"
        if not net.is_dir():
            return
        for ifname in os.listdir(net):
            (self.root / "class/net" / ifname).unlink(missing_ok=True)
        shutil.rmtree(net)


def _vf_ifname(pf: PfHandle, index: int) -> str:
    return f"{pf.ifname or 'vf'}v{index}"


def _write(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    """Relative symlink, as the kernel makes them, so the tree can move as a whole."""
    os.symlink(os.path.relpath(target, link.parent), link)


def build_node(
    root: Path,
    pfs: int = 2,
    vfs_per_pf: int = 8,
    sfs_per_pf: int = 2,
    vf_driver: str | None = "mlx5_core",
    total_vfs: int | None = None,
) -> FakeSysfs:
    """A standard simulated node: dual-port cards ens1f0/ens1f1 (0000:3b:00.0/.1),
    ens2f0/ens2f1 (0000:4b:00.0/.1), ...; even PFs on NUMA 0, odd PFs on NUMA 1;
    VFs from 0000:3b:02.0 and 0000:3b:0a.0 upward; SFs with sfnum 0.. per PF."""
    if pfs > 2 * 12:
        raise ValueError("build_node lays out at most 24 PFs")
    sysfs = FakeSysfs(root)
    for number in range(pfs):
        card, port = divmod(number, 2)
        pf = sysfs.add_pf(
            str(PciAddress(0, 0x3B + card * 0x10, 0, port)),
            f"ens{card + 1}f{port}",
            numa_node=number % 2,
            total_vfs=total_vfs if total_vfs is not None else max(16, vfs_per_pf),
        )
        sysfs.add_vfs(pf, vfs_per_pf, driver=vf_driver)
    for pf in sysfs.pfs:
        for sfnum in range(sfs_per_pf):
            sysfs.add_sf(pf, sfnum)
    return sysfs
