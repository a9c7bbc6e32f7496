"""The paths the daemon reads and writes: usable before anything starts, or one line naming
the flag and the fix (wiring, like daemon.py). `check-config` asks the same without writing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from xpu_bridge.common.errors import StartupError


def _problem(flag: str, path: Path) -> str | None:
    """Made if missing; then it must be a directory we can create files in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{flag}: {path} exists and is not a directory; point {flag} at a directory"
    except OSError as error:
        return f"{flag}: cannot create {path}: {error.strerror or error}"
    if not path.is_dir():
        return f"{flag}: {path} is not a directory; point {flag} at a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".xpu-bridge-probe-", dir=path)
    except OSError as error:
        return f"{flag}: cannot write in {path}: {error.strerror or error}"
    os.close(fd)
    os.unlink(probe)
    return None


def _would_be_usable(flag: str, path: Path) -> str | None:
    """What `_problem` would find, without creating or writing anything."""
    if path.exists():
        if not path.is_dir():
            return f"{flag}: {path} exists and is not a directory; point {flag} at a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{flag}: cannot write in {path}: permission denied; run as root or fix it"
        return None
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag}: {path} does not exist and cannot be created in {parent}"
    return None


def directory_problems(directories: dict[str, Path], *, create: bool) -> list[str]:
    """One line per unusable directory, keyed by the flag that names it; `create` makes the
    missing ones and writes a probe file, as start-up does."""
    check = _problem if create else _would_be_usable
    return [p for flag, path in directories.items() if (p := check(flag, path))]


def check_writable(directories: dict[str, Path]) -> None:
    """StartupError with one line per unusable directory, keyed by the flag that names it."""
    problems = directory_problems(directories, create=True)
    if problems:
        raise StartupError(problems)


def sysfs_problem(flag: str, root: Path) -> str | None:
    """A root without bus/pci/devices is not a sysfs: every pool would come up empty."""
    if not root.is_dir():
        return f"{flag}: {root} is not a directory; point {flag} at the host's /sys"
    if not (root / "bus" / "pci" / "devices").is_dir():
        return (
            f"{flag}: {root} has no bus/pci/devices, so it is not a sysfs; point {flag} at the "
            "host's /sys (in a container, a hostPath mount of /sys)"
        )
    return None
