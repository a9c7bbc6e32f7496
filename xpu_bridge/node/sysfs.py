"""Reading sysfs safely: every directory opened lies inside the root, no final link followed."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from xpu_bridge.common.pci import HEX_ID, MAC_TEXT

UPLINK_PORT = re.compile(r"p\d+")
# What the kernel writes: ASCII digits (str.isdigit() also takes '²', which int() refuses),
# no more than the attribute can hold (sriov_*vfs are u16, numa_node below MAX_NUMNODES).
COUNT = re.compile(r"[0-9]{1,5}")
NUMA_NODE = re.compile(r"-?[0-9]{1,4}")
MAX_COUNT = 0xFFFF

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SYMLINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)

T = TypeVar("T")


class SysfsError(Exception):
    """An entry that cannot be trusted or read; the message says why."""


def safe_name(name: str) -> bool:
    """Whether a name read from sysfs can be used as one path component."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def why(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


class SysfsRoot:
    """A resolved sysfs root, and the problems one scan of it met (entries it skipped)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.prefix = self.root.rstrip("/") + "/"
        self.problems: list[str] = []
        self._real_dirs: dict[str, str] = {}

    def problem(self, where: str, reason: str) -> None:
        self.problems.append(f"{self._relative(where)}: {reason}")

    def bus(self, relative: str, required: bool) -> SysfsDir | None:
        path = os.path.join(self.root, relative)
        try:
            real = os.path.realpath(path)
            self._check_inside(real)
            return self.open(real)
        except FileNotFoundError:
            if required:
                self.problem(path, "missing; is this a sysfs root?")
        except (OSError, SysfsError) as error:
            self.problem(path, why(error))
        return None

    def follow(self, base: SysfsDir, link: str) -> SysfsDir:
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
            return self.open(path)
        except OSError as error:
            if error.errno not in _SYMLINK_ERRNOS:
                raise
        real = os.path.realpath(path)
        self._check_inside(real)
        return self.open(real)

    def open(self, real: str) -> SysfsDir:
        return SysfsDir(self, real, os.open(real, _DIR))

    def _check_inside(self, path: str) -> None:
        if not (path == self.root or path.startswith(self.prefix)):
            raise SysfsError(f"link leads outside the sysfs root (to {path})")

    def _relative(self, path: str) -> str:
        return path.removeprefix(self.prefix) if path.startswith(self.prefix) else path


class SysfsDir:
    """An open device directory; reads attributes in it without following a final symlink."""

    def __init__(self, root: SysfsRoot, path: str, fd: int) -> None:
        self.root = root
        self.path = path
        self.fd = fd

    def __enter__(self) -> SysfsDir:
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

    def count(self, name: str) -> int | None:
        """A small non-negative number (sriov_numvfs), None if absent or not a number."""
        text = self.text(name)
        if text is None or not COUNT.fullmatch(text) or int(text) > MAX_COUNT:
            return None
        return int(text)

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
        nothing: tuple[str | None, str | None] = (None, None)
        return self._soft("net", self._netdev, nothing)

    def _soft(self, what: str, read: Callable[[], T], default: T) -> T:
        """Read an optional attribute; a failure is a problem, not a reason to drop the device."""
        try:
            return read()
        except (OSError, SysfsError) as error:
            self.root.problem(self.path, f"{what}: {why(error)}")
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
        if not NUMA_NODE.fullmatch(text):
            large = text.lstrip("-").isascii() and text.lstrip("-").isdigit()
            raise SysfsError(
                f"{text[:20]!r} is " + ("beyond any NUMA node" if large else "not a number")
            )
        node = int(text)
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
