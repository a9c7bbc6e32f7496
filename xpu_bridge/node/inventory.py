"""Device inventory: the SR-IOV VFs and scalable functions a sysfs tree shows, read safely."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xpu_bridge.common.pci import PCI_ADDRESS
from xpu_bridge.node.sysfs import SysfsDir, SysfsError, SysfsRoot, safe_name, why

VIRTFN = re.compile(r"virtfn(\d{1,5})")
SFNUM = re.compile(r"[0-9]{1,10}")
MAX_SFNUM = 0xFFFFFFFF
"""devlink's sfnum is a u32; a port ID has room for ten digits."""
AUX_NAME = re.compile(r"[^.]+\.([^.]+)\.\d+")


@dataclass(frozen=True, slots=True)
class Device:
    """One function the kubelet can allocate. `id` is the VF's PCI address or the SF's aux
    device name; `index` is the VF index or the sfnum; an SF reports its parent PF's
    pci_address, vendor, device_code and numa_node, having none of its own."""

    id: str
    kind: Literal["vf", "sf"]
    pci_address: str
    pf_address: str
    pf_name: str | None
    index: int
    vendor: str
    device_code: str
    driver: str | None
    numa_node: int | None
    iommu_group: str | None
    netdev: str | None
    mac: str | None
    aux_type: str | None


@dataclass(frozen=True, slots=True)
class PhysicalFunction:
    """A PF with SR-IOV (`sriov_totalvfs`) or SFs; `num_vfs` is its `sriov_numvfs` now."""

    address: str
    name: str | None
    vendor: str
    device_code: str
    numa_node: int | None
    total_vfs: int | None
    num_vfs: int | None


@dataclass(frozen=True, slots=True)
class Inventory:
    """One scan's result; `problems` lists entries skipped or read only in part; `pfs` are
    sorted by PCI address."""

    devices: tuple[Device, ...] = ()
    problems: tuple[str, ...] = ()
    pfs: tuple[PhysicalFunction, ...] = ()


def aux_type(name: str) -> str | None:
    """`sf` for `mlx5_core.sf.4`: names are <driver>.<type>.<id>, as sriov-network-device-plugin
    parses them; anything else has no aux type."""
    match = AUX_NAME.fullmatch(name)
    return match.group(1) if match else None


def discover(sysfs_root: Path) -> Inventory:
    """Scan PFs' VFs and the auxiliary bus's SFs; bad entries become problems, not errors."""
    scan = _Scan(sysfs_root)
    found: dict[str, Device] = {}
    for device in (*scan.vfs(), *scan.sfs()):
        if device.id in found:
            scan.problem(device.id, "reached twice; keeping the first")
            continue
        found[device.id] = device
    devices = tuple(sorted(found.values(), key=lambda device: device.id))
    pfs = tuple(sorted(scan.pfs(), key=lambda pf: pf.address))
    return Inventory(devices, tuple(scan.sysfs.problems), pfs)


class _Scan:
    """One discovery pass over a root; every directory it opens lies inside it."""

    def __init__(self, root: Path) -> None:
        self.sysfs = SysfsRoot(root)
        self.problem = self.sysfs.problem
        self._pfs: dict[str, PhysicalFunction] = {}

    def pfs(self) -> list[PhysicalFunction]:
        return list(self._pfs.values())

    def vfs(self) -> Iterator[Device]:
        bus = self.sysfs.bus("bus/pci/devices", required=True)
        if bus is None:
            return
        with bus:
            for name in sorted(os.listdir(bus.fd)):
                where = os.path.join(bus.path, name)
                try:
                    yield from self._pci_function(bus, name)
                except (OSError, SysfsError) as error:
                    self.problem(where, why(error))

    def sfs(self) -> Iterator[Device]:
        bus = self.sysfs.bus("bus/auxiliary/devices", required=False)
        if bus is None:
            return
        with bus:
            for name in sorted(os.listdir(bus.fd)):
                try:
                    device = self._aux_device(bus, name)
                except (OSError, SysfsError) as error:
                    self.problem(os.path.join(bus.path, name), why(error))
                    continue
                if device is not None:
                    yield device

    def _pci_function(self, bus: SysfsDir, name: str) -> Iterator[Device]:
        if not PCI_ADDRESS.fullmatch(name):
            raise SysfsError("not a PCI address")
        with self.sysfs.follow(bus, name) as function:
            if os.path.basename(function.path) != name:
                raise SysfsError(f"link leads to {os.path.basename(function.path)!r}")
            if not function.has("sriov_totalvfs"):
                self._check_physfn(function)
                return
            pf = self._pf_info(function)
            for index, link in _virtfn_links(function.fd):
                try:
                    device = self._vf(pf, function, index, link)
                except (OSError, SysfsError) as error:
                    self.problem(os.path.join(function.path, link), why(error))
                    continue
                if device is not None:
                    yield device

    def _vf(self, pf: PhysicalFunction, pf_dir: SysfsDir, index: int, link: str) -> Device | None:
        with self.sysfs.follow(pf_dir, link) as vf:
            address = os.path.basename(vf.path)
            if not PCI_ADDRESS.fullmatch(address):
                raise SysfsError(f"link leads to {address!r}, not a PCI function")
            try:
                return self._vf_device(pf, vf, index)
            except (OSError, SysfsError) as error:
                self.problem(vf.path, why(error))
                return None

    def _vf_device(self, pf: PhysicalFunction, vf: SysfsDir, index: int) -> Device:
        address = os.path.basename(vf.path)
        netdev, mac = vf.netdev()
        return Device(
            id=address,
            kind="vf",
            pci_address=address,
            pf_address=pf.address,
            pf_name=pf.name,
            index=index,
            vendor=vf.hex_id("vendor"),
            device_code=vf.hex_id("device"),
            driver=vf.link("driver"),
            numa_node=vf.numa_node(),
            iommu_group=vf.iommu_group(),
            netdev=netdev,
            mac=mac,
            aux_type=None,
        )

    def _aux_device(self, bus: SysfsDir, name: str) -> Device | None:
        """An SF, or None for the bus's other devices (eth, rdma, nested under an SF, ...)."""
        if not safe_name(name):
            raise SysfsError("unusable name")
        with self.sysfs.follow(bus, name) as aux:
            parent = os.path.dirname(aux.path)
            if not PCI_ADDRESS.fullmatch(os.path.basename(parent)):
                return None
            sfnum = aux.text("sfnum")
            if sfnum is None:
                return None
            kind = aux_type(name)
            if kind is None or not SFNUM.fullmatch(sfnum) or int(sfnum) > MAX_SFNUM:
                raise SysfsError(f"SF name or sfnum {sfnum[:20]!r} does not parse")
            pf = self._pf_at(parent)
            netdev, mac = aux.netdev()
            return Device(
                id=name,
                kind="sf",
                pci_address=pf.address,
                pf_address=pf.address,
                pf_name=pf.name,
                index=int(sfnum),
                vendor=pf.vendor,
                device_code=pf.device_code,
                driver=aux.link("driver"),
                numa_node=pf.numa_node,
                iommu_group=None,
                netdev=netdev,
                mac=mac,
                aux_type=kind,
            )

    def _check_physfn(self, function: SysfsDir) -> None:
        """A VF is offered through its PF's virtfnN links; one whose PF is gone (physfn leads
        nowhere) is offered by none, and a physfn that leads out of the root is odd: each is
        worth a line."""
        if not function.has("physfn"):
            return  # a plain function, not a VF
        try:
            with self.sysfs.follow(function, "physfn"):
                return
        except FileNotFoundError:
            self.problem(function.path, "its PF is gone (physfn leads nowhere); not offered")
        except (OSError, SysfsError) as error:
            self.problem(function.path, f"physfn: {why(error)}")

    def _pf_info(self, function: SysfsDir) -> PhysicalFunction:
        cached = self._pfs.get(function.path)
        if cached is None:
            name, _ = function.netdev()
            cached = PhysicalFunction(
                address=os.path.basename(function.path),
                name=name,
                vendor=function.hex_id("vendor"),
                device_code=function.hex_id("device"),
                numa_node=function.numa_node(),
                total_vfs=function.count("sriov_totalvfs"),
                num_vfs=function.count("sriov_numvfs"),
            )
            self._pfs[function.path] = cached
        return cached

    def _pf_at(self, path: str) -> PhysicalFunction:
        cached = self._pfs.get(path)
        if cached is not None:
            return cached
        with self.sysfs.open(path) as function:
            return self._pf_info(function)


def _virtfn_links(fd: int) -> list[tuple[int, str]]:
    """(index, name) of a PF's virtfnN links, in index order."""
    with os.scandir(fd) as entries:
        matches = [(VIRTFN.fullmatch(entry.name), entry.name) for entry in entries]
    return sorted((int(match.group(1)), name) for match, name in matches if match)
