"""Unix socket files we bind: a path that fits, its directory, and no stale socket in the way."""

from __future__ import annotations

import stat
from pathlib import Path

# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class NotASocket(OSError):
    """The configured socket path holds something else; we refuse to delete it."""


def remove_stale_socket(path: Path, what: str) -> None:
    """Remove a socket file left behind by an earlier process; any other file is refused."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NotASocket(f"{what}: {path} exists and is not a socket; not removing it")
    path.unlink(missing_ok=True)


def prepare_socket(path: Path, what: str, *, make_parent: bool = True) -> None:
    """Before binding `path`: it fits in sun_path, its directory exists (made unless
    `make_parent` is False: a directory someone else owns), and no stale socket is left."""
    if len(str(path)) > MAX_SOCKET_PATH:
        raise OSError(
            f"{what}: unix socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "use a shorter directory"
        )
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path, what)
