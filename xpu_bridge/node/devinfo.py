"""Device-info files (device-info-spec 1.1.0) that tell CNIs which device a pod got."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path

from xpu_bridge.node.inventory import Device

SPEC_VERSION = "1.1.0"
SAFE_NAME = re.compile(r"^[A-Za-z0-9._:-]+$")


class DevInfoError(Exception):
    """A device-info file could not be written or would land outside --devinfo-dir."""


def device_info(device: Device) -> dict[str, object]:
    if device.kind == "sf":
        return {
            "type": "auxiliary",
            "version": SPEC_VERSION,
            "auxiliary": {"device-id": device.id, "pf-pci-address": device.pf_address},
        }
    return {
        "type": "pci",
        "version": SPEC_VERSION,
        "pci": {"pci-address": device.pci_address, "pf-pci-address": device.pf_address},
    }


OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class DevInfoStore:
    """Writes and removes one file per allocated device, never outside its directory. The
    write is on the Allocate path: plain fds and names computed once per device."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_exists = False
        self._names: dict[tuple[str, str], tuple[str, str]] = {}
        self._documents: dict[Device, bytes] = {}

    def path_for(self, resource_name: str, device_id: str) -> Path:
        return Path(self._paths(resource_name, device_id)[0])

    def _paths(self, resource_name: str, device_id: str) -> tuple[str, str]:
        """The file and its temporary sibling, as strings (checked once, then cached)."""
        key = (resource_name, device_id)
        paths = self._names.get(key)
        if paths is None:
            name = f"{resource_name.replace('/', '-')}-{device_id.replace('/', '-')}-device.json"
            if not SAFE_NAME.match(name) or ".." in name:
                raise DevInfoError(f"device {device_id}: unsafe device-info file name {name!r}")
            paths = (os.path.join(self.root, name), os.path.join(self.root, f".{name}.tmp"))
            self._names[key] = paths
        return paths

    def write(self, resource_name: str, device: Device) -> Path:
        """Atomic replace, so a CNI never reads half a file."""
        path, temporary = self._paths(resource_name, device.id)
        data = self._documents.get(device)
        if data is None:
            data = json.dumps(device_info(device), separators=(",", ":")).encode()
            self._documents[device] = data
        try:
            if not self._root_exists:
                self.root.mkdir(parents=True, exist_ok=True)
                self._root_exists = True
            fd = os.open(temporary, OPEN_FLAGS, 0o444)
            try:
                os.write(fd, data)
                os.fchmod(fd, 0o444)  # whatever the umask
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):  # a full disk leaves an empty one behind
                os.unlink(temporary)
            raise DevInfoError(
                f"device {device.id}: cannot write device-info file {path}: {error.strerror}; "
                f"{self._fix(error)}"
            ) from None
        return Path(path)

    def _fix(self, error: OSError) -> str:
        """What the operator can do about a failed write, naming the flag."""
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"free space on the file system of --devinfo-dir {self.root}"
        if error.errno == errno.EROFS:
            return f"mount the file system of --devinfo-dir {self.root} read-write"
        if error.errno in (errno.EACCES, errno.EPERM):
            return f"let the daemon's user write in --devinfo-dir {self.root}"
        return f"check --devinfo-dir {self.root}"

    def remove(self, resource_name: str, device_id: str) -> None:
        path = self._paths(resource_name, device_id)[0]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise DevInfoError(
                f"device {device_id}: cannot remove device-info file {path}: {error.strerror}"
            ) from None
