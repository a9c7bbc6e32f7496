"""Unix socket files we own: remove a stale one, but never a file that is not a socket."""

from __future__ import annotations

import stat
from pathlib import Path


class NotASocket(OSError):
    """The configured socket path holds something else; we refuse to delete it."""


def remove_stale_socket(path: Path, what: str) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NotASocket(f"{what}: {path} exists and is not a socket; not removing it")
    path.unlink(missing_ok=True)
