"""The directories the daemon writes into: usable before anything starts, or one line naming
the flag (wiring, like daemon.py)."""

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


def check_writable(directories: dict[str, Path]) -> None:
    """StartupError with one line per unusable directory, keyed by the flag that names it."""
    problems = [p for flag, path in directories.items() if (p := _problem(flag, path))]
    if problems:
        raise StartupError(problems)
