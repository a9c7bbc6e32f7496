"""Device inventory: the SR-IOV VFs and scalable functions a sysfs tree shows, read safely."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from xpu_bridge.identity import HEX_ID, MAC_TEXT, PCI_ADDRESS

VIRTFN = re.compile(r"virtfn(\d{1,5})")
AUX_NAME = re.compile(r"[^.]+\.([^.]+)\.\d+")
UPLINK_PORT = re.compile(r"p\d+")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SYMLINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)

T = TypeVar("T")


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
class Inventory:
    """One scan's result; `problems` lists entries skipped or read only in part."""

    devices: tuple[Device, ...] = ()
    problems: tuple[str, ...] = ()


class SysfsError(Exception):
    """An entry that cannot be trusted or read; the message says why."""


def aux_type(name: str) -> str | None:
    """`sf` for `mlx5_core.sf.4`: names are <driver>.<type>.<id>, as sriov-network-device-plugin
    parses them; anything else has no aux type."""
    match = AUX_NAME.fullmatch(name)
    return match.group(1) if match else None


def safe_name(name: str) -> bool:
    """Whether a name read from sysfs can be used as one path component."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


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
    return Inventory(devices, tuple(scan.problems))


@dataclass(frozen=True, slots=True)
class _Pf:
    address: str
    name: str | None
    vendor: str
    device_code: str
    numa_node: int | None


class _Dir:
    """An open device directory; reads attributes in it without following a final symlink."""

    def __init__(self, scan: _Scan, path: str, fd: int) -> None:
        self.scan = scan
        self.path = path
        self.fd = fd

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)

    def text(self, name: str, fd: int | None = None) -> str | None:
        """A small attribute's content, None if absent."""
        try:
            handle = os.open(name, _FILE, dir_fd=self.fd if fd is None else fd)
        except FileNotFoundError:
            return None
        try:
            return os.read(handle, 256).decode("utf-8", "replace").strip()
        finally:
            os.close(handle)

    def has(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def hex_id(self, name: str) -> str:
        value = (self.text(name) or "").lower().removeprefix("0x")
        if not HEX_ID.fullmatch(value):
            raise SysfsError(f"{name} is missing or not a 4-digit hex ID")
        return value

    def link(self, name: str) -> str | None:
        """The last component of a link's target (driver, iommu_group), None if no link."""
        return self._soft(name, lambda: self._link_base(name), None)

    def numa_node(self) -> int | None:
        return self._soft("numa_node", self._numa_node, None)

    def iommu_group(self) -> str | None:
        """The group number; it later names /dev/vfio/<group>, so nothing but digits passes."""
        return self._soft("iommu_group", self._iommu_group, None)

    def netdev(self) -> tuple[str | None, str | None]:
        """The function's own netdev and its MAC; (None, None) when it has none."""
        return self._soft("net", self._netdev, (None, None))

    def _soft(self, what: str, read: Callable[[], T], default: T) -> T:
        """Read an optional attribute; a failure is a problem, not a reason to drop the device."""
        try:
            return read()
        except (OSError, SysfsError) as error:
            self.scan.problem(self.path, f"{what}: {_why(error)}")
            return default

    def _link_base(self, name: str) -> str | None:
        try:
            target = os.readlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        base = os.path.basename(target.rstrip("/"))
        if not safe_name(base):
            raise SysfsError("link has no usable name")
        return base

    def _iommu_group(self) -> str | None:
        group = self._link_base("iommu_group")
        if group is not None and not group.isdigit():
            raise SysfsError(f"{group[:20]!r} is not a group number")
        return group

    def _numa_node(self) -> int | None:
        text = self.text("numa_node")
        if text is None:
            return None
        try:
            node = int(text)
        except ValueError:
            raise SysfsError(f"{text[:20]!r} is not a number") from None
        return None if node < 0 else node

    def _netdev(self) -> tuple[str | None, str | None]:
        try:
            net = os.open("net", _DIR, dir_fd=self.fd)
        except FileNotFoundError:
            return None, None
        try:
            with os.scandir(net) as entries:
                names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
            name = self._pick_netdev(net, names)
            if name is None:
                return None, None
            mac = (self.text(f"{name}/address", net) or "").lower()
            return name, mac if MAC_TEXT.fullmatch(mac) else None
        finally:
            os.close(net)

    def _pick_netdev(self, net: int, names: list[str]) -> str | None:
        """The uplink when a switchdev PF also lists representors, else the first name."""
        names = [name for name in names if safe_name(name)]
        if len(names) > 1:
            for name in names:
                if UPLINK_PORT.fullmatch(self.text(f"{name}/phys_port_name", net) or ""):
                    return name
        return names[0] if names else None


class _Scan:
    """One discovery pass: every path it opens is checked to lie inside the resolved root."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.prefix = self.root.rstrip("/") + "/"
        self.problems: list[str] = []
        self._real_dirs: dict[str, str] = {}
        self._pfs: dict[str, _Pf] = {}

    def problem(self, where: str, why: str) -> None:
        self.problems.append(f"{self._relative(where)}: {why}")

    def vfs(self) -> Iterator[Device]:
        bus = self._bus("bus/pci/devices", required=True)
        if bus is None:
            return
        with bus:
            for name in sorted(os.listdir(bus.fd)):
                where = os.path.join(bus.path, name)
                try:
                    yield from self._pci_function(bus, name)
                except (OSError, SysfsError) as error:
                    self.problem(where, _why(error))

    def sfs(self) -> Iterator[Device]:
        bus = self._bus("bus/auxiliary/devices", required=False)
        if bus is None:
            return
        with bus:
            for name in sorted(os.listdir(bus.fd)):
                try:
                    device = self._aux_device(bus, name)
                except (OSError, SysfsError) as error:
                    self.problem(os.path.join(bus.path, name), _why(error))
                    continue
                if device is not None:
                    yield device

    def _pci_function(self, bus: _Dir, name: str) -> Iterator[Device]:
        if not PCI_ADDRESS.fullmatch(name):
            raise SysfsError("not a PCI address")
        with self._follow(bus, name) as function:
            if os.path.basename(function.path) != name:
                raise SysfsError(f"link leads to {os.path.basename(function.path)!r}")
            if not function.has("sriov_totalvfs"):
                return
            pf = self._pf_info(function)
            for index, link in _virtfn_links(function.fd):
                try:
                    device = self._vf(pf, function, index, link)
                except (OSError, SysfsError) as error:
                    self.problem(os.path.join(function.path, link), _why(error))
                    continue
                if device is not None:
                    yield device

    def _vf(self, pf: _Pf, pf_dir: _Dir, index: int, link: str) -> Device | None:
        with self._follow(pf_dir, link) as vf:
            address = os.path.basename(vf.path)
            if not PCI_ADDRESS.fullmatch(address):
                raise SysfsError(f"link leads to {address!r}, not a PCI function")
            try:
                return self._vf_device(pf, vf, index)
            except (OSError, SysfsError) as error:
                self.problem(vf.path, _why(error))
                return None

    def _vf_device(self, pf: _Pf, vf: _Dir, index: int) -> Device:
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

    def _aux_device(self, bus: _Dir, name: str) -> Device | None:
        """An SF, or None for the bus's other devices (eth, rdma, nested under an SF, ...)."""
        if not safe_name(name):
            raise SysfsError("unusable name")
        with self._follow(bus, name) as aux:
            parent = os.path.dirname(aux.path)
            if not PCI_ADDRESS.fullmatch(os.path.basename(parent)):
                return None
            sfnum = aux.text("sfnum")
            if sfnum is None:
                return None
            kind = aux_type(name)
            if kind is None or not sfnum.isdigit():
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

    def _pf_info(self, function: _Dir) -> _Pf:
        cached = self._pfs.get(function.path)
        if cached is None:
            name, _ = function.netdev()
            cached = _Pf(
                address=os.path.basename(function.path),
                name=name,
                vendor=function.hex_id("vendor"),
                device_code=function.hex_id("device"),
                numa_node=function.numa_node(),
            )
            self._pfs[function.path] = cached
        return cached

    def _pf_at(self, path: str) -> _Pf:
        cached = self._pfs.get(path)
        if cached is not None:
            return cached
        with self._open(path) as function:
            return self._pf_info(function)

    def _bus(self, relative: str, required: bool) -> _Dir | None:
        path = os.path.join(self.root, relative)
        try:
            real = os.path.realpath(path)
            self._check_inside(real)
            return self._open(real)
        except FileNotFoundError:
            if required:
                self.problem(path, "missing; is this a sysfs root?")
        except (OSError, SysfsError) as error:
            self.problem(path, _why(error))
        return None

    def _follow(self, base: _Dir, link: str) -> _Dir:
        """Open the directory `link` (in `base`) points to, refusing anything outside the root.
        Resolves only the target's parent (once per parent) and opens its last component
        without following, so a scan costs one realpath per directory, not per device."""
        target = os.readlink(link, dir_fd=base.fd)
        joined = os.path.normpath(os.path.join(base.path, target))
        parent, last = os.path.split(joined)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        path = os.path.join(real_parent, last)
        self._check_inside(path)
        try:
            return self._open(path)
        except OSError as error:
            if error.errno not in _SYMLINK_ERRNOS:
                raise
        real = os.path.realpath(path)
        self._check_inside(real)
        return self._open(real)

    def _open(self, real: str) -> _Dir:
        return _Dir(self, real, os.open(real, _DIR))

    def _check_inside(self, path: str) -> None:
        if not (path == self.root or path.startswith(self.prefix)):
            raise SysfsError(f"link leads outside the sysfs root (to {path})")

    def _relative(self, path: str) -> str:
        return path.removeprefix(self.prefix) if path.startswith(self.prefix) else path


def _virtfn_links(fd: int) -> list[tuple[int, str]]:
    """(index, name) of a PF's virtfnN links, in index order."""
    with os.scandir(fd) as entries:
        matches = [(VIRTFN.fullmatch(entry.name), entry.name) for entry in entries]
    return sorted((int(match.group(1)), name) for match, name in matches if match)


def _why(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)
