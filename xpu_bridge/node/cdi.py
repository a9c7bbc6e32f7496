"""CDI (Container Device Interface) spec files: one per pool in cdi.specDir, kept in step.

The spec of pool `opi.io/red` is `<specDir>/opi.io-red.json`, kind `opi.io/red` (vendor: the
resource prefix, class: the pool's name), with one device per device of the pool, named by
its ID. A vfio VF's containerEdits hold the device nodes a non-CDI Allocate answers
(`/dev/vfio/vfio` and its IOMMU group's node), and Allocate names it
`opi.io/red=0000:3b:02.0` (allocator.cdi_name). CDI refuses a device without edits, so a
netdev-only device (its netdev goes to the pod through the CNI, not the runtime) gets one env
variable, `PCIDEVICE_OPI_IO_RED_CDI_0000_3B_02_1=0000:3b:02.1`; Allocate never names it. A pool
without devices has no spec (CDI refuses a spec without devices). cdiVersion is the lowest
that allows what the spec holds, as the CDI library computes it: 0.5.0 for device names that
start with a digit (PCI addresses), 0.6.0 for a class with a dot, else 0.3.0.

A spec is written (temporary file in specDir, fsync, rename; mode 0644) only when its content
changes, removed when its pool goes (a reload removed it and none of its devices is in use)
or has no devices, and every spec is removed when the daemon stops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NotRequired, TypedDict

from xpu_bridge.common.errors import ProblemsError
from xpu_bridge.config.document import CDI_DEVICE_NAME, CDI_VENDOR_OR_CLASS
from xpu_bridge.node.allocator import device_nodes
from xpu_bridge.node.devinfo import SAFE_NAME
from xpu_bridge.node.pool import DevicePool, PoolDevice

log = logging.getLogger(__name__)

SPEC_MODE = 0o644
NOT_ENV = re.compile(r"[^A-Z0-9_]")


class CdiError(ProblemsError):
    """CDI specs could not be written or removed; one line per spec, naming the path."""


class CdiDeviceNode(TypedDict):
    path: str
    hostPath: NotRequired[str]
    permissions: str


class CdiEdits(TypedDict, total=False):
    env: list[str]
    deviceNodes: list[CdiDeviceNode]


class CdiDevice(TypedDict):
    name: str
    containerEdits: CdiEdits


class CdiSpec(TypedDict):
    cdiVersion: str
    kind: str
    devices: list[CdiDevice]


def spec_file_name(kind: str) -> str:
    """`opi.io/red` -> `opi.io-red.json`; CdiError unless `kind` is a CDI kind, whose vendor
    and class cannot hold `/` (so the file stays in specDir)."""
    vendor, slash, cls = kind.partition("/")
    name = f"{vendor}-{cls}.json"
    valid = slash and CDI_VENDOR_OR_CLASS.match(vendor) and CDI_VENDOR_OR_CLASS.match(cls)
    if not valid or not SAFE_NAME.match(name) or name.startswith("."):
        raise CdiError([f"{kind!r} is not a CDI kind (vendor/class): no CDI spec for it"])
    return name


def env_name(pool: DevicePool, device_id: str) -> str:
    return f"{pool.env_name}_CDI_{NOT_ENV.sub('_', device_id.upper())}"


def _device(pool: DevicePool, entry: PoolDevice) -> CdiDevice:
    nodes = device_nodes(entry)
    if not nodes:
        return {
            "name": entry.id,
            "containerEdits": {"env": [f"{env_name(pool, entry.id)}={entry.id}"]},
        }
    edits: list[CdiDeviceNode] = []
    for node in nodes:
        edit: CdiDeviceNode = {"path": node.container_path, "permissions": node.permissions}
        if node.host_path != node.container_path:
            edit["hostPath"] = node.host_path
        edits.append(edit)
    return {"name": entry.id, "containerEdits": {"deviceNodes": edits}}


def minimum_version(kind: str, devices: list[CdiDevice]) -> str:
    """The lowest cdiVersion that allows these (the CDI library's MinimumRequiredVersion for
    the fields used here)."""
    if "." in kind.partition("/")[2]:
        return "0.6.0"
    host_paths = any(
        "hostPath" in node for d in devices for node in d["containerEdits"].get("deviceNodes", [])
    )
    if host_paths or any(d["name"][:1].isdigit() for d in devices):
        return "0.5.0"
    return "0.3.0"


def spec_document(pool: DevicePool) -> CdiSpec | None:
    """The pool's spec, or None when it has no device to list. A device whose ID is no CDI
    device name is left out: Allocate answers it without CDI (allocator.cdi_name)."""
    devices = [_device(pool, e) for e in pool.devices() if CDI_DEVICE_NAME.match(e.id)]
    if not devices:
        return None
    kind = pool.resource_name
    return {"cdiVersion": minimum_version(kind, devices), "kind": kind, "devices": devices}


def unnamed(pool: DevicePool) -> list[str]:
    """The pool's device IDs that are no CDI device name (none from sysfs so far)."""
    return [entry.id for entry in pool.devices() if not CDI_DEVICE_NAME.match(entry.id)]


def encoded(spec: CdiSpec) -> bytes:
    return (json.dumps(spec, indent=2) + "\n").encode()


class CdiSpecs:
    """The spec files of our pools in one directory; sync() after every change of the pools'
    devices writes what changed and removes what went."""

    def __init__(self, spec_dir: Path) -> None:
        self.spec_dir = spec_dir
        self._written: dict[str, bytes] = {}
        """By file name: the content this daemon wrote there last."""
        self._unnamed: set[str] = set()
        """Device IDs said to be left out already (said once, not every rescan)."""

    def path_for(self, kind: str) -> Path:
        return self.spec_dir / spec_file_name(kind)

    def sync(self, pools: Iterable[DevicePool]) -> None:
        """Write the spec of every pool given whose content changed, remove the others we
        wrote; raises CdiError naming each that failed (the rest is done; the next sync
        tries those again)."""
        problems: list[str] = []
        wanted: dict[str, bytes] = {}
        for pool in pools:
            self._say_unnamed(pool)
            spec = spec_document(pool)
            if spec is None:
                continue
            try:
                wanted[spec_file_name(pool.resource_name)] = encoded(spec)
            except CdiError as error:
                problems.extend(error.problems)
        for name, data in wanted.items():
            if self._written.get(name) != data:
                try:
                    self._write(name, data)
                except OSError as error:
                    problems.append(f"cannot write CDI spec {self.spec_dir / name}: {_why(error)}")
        for name in [name for name in self._written if name not in wanted]:
            try:
                self._remove(name)
            except OSError as error:
                problems.append(f"cannot remove CDI spec {self.spec_dir / name}: {_why(error)}")
        if problems:
            raise CdiError(problems)

    def _say_unnamed(self, pool: DevicePool) -> None:
        for device_id in unnamed(pool):
            if device_id not in self._unnamed:
                self._unnamed.add(device_id)
                log.warning(
                    "cdi: device %r of %s is no valid CDI device name: left out of the CDI "
                    "spec, and Allocate answers it without CDI",
                    device_id,
                    pool.resource_name,
                )

    def follow(self, pools: Iterable[DevicePool]) -> None:
        """sync(), each failure an ERROR line (a rescan goes on; the next one retries)."""
        try:
            self.sync(pools)
        except CdiError as error:
            for problem in error.problems:
                log.error("cdi: %s", problem)

    def remove_all(self) -> None:
        """At stop: every spec this daemon wrote goes; a failure is an ERROR line."""
        for name in list(self._written):
            try:
                self._remove(name)
            except OSError as error:
                log.error("cdi: cannot remove CDI spec %s: %s", self.spec_dir / name, _why(error))

    def _write(self, name: str, data: bytes) -> None:
        """Atomic: a runtime reading specDir sees the old spec or the new one, never half of
        one; the temporary file's name ends in neither .json nor .yaml, so it is not read."""
        self.spec_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.spec_dir)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, SPEC_MODE)  # whatever the umask
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.spec_dir / name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fsync_dir()
        self._written[name] = data
        log.info("cdi: wrote %s", self.spec_dir / name)

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spec_dir / name)
        del self._written[name]
        log.info("cdi: removed %s", self.spec_dir / name)

    def _fsync_dir(self) -> None:
        """The rename itself survives a crash once the directory is synced too."""
        with contextlib.suppress(OSError):
            fd = os.open(self.spec_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _why(error: OSError) -> str:
    return error.strerror or str(error)
