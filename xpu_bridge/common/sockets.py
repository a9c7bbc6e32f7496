"""Unix socket files we bind: a path that fits, its directory, no stale socket in the way, and
mode 0600 from the moment the file exists."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class NotASocket(OSError):
    """The configured socket path holds something else; we refuse to delete it."""


class SocketInUse(OSError):
    """Another live process serves this socket; we refuse to take it over."""


def served(path: Path) -> bool:
    """Whether a process accepts connections on the socket at `path` now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Around a bind (no await inside): the socket file is created 0600, never readable or
    writable by others even for a moment. The umask is the process's; restored at once."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)


def remove_stale_socket(path: Path, what: str) -> None:
    """Remove a socket file left behind by an earlier process; any other file is refused."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NotASocket(f"{what}: {path} exists and is not a socket; not removing it")
    if served(path):
        raise SocketInUse(
            f"{what}: {path} is served by another live process; not taking it over "
            "(stop that process, or choose another path)"
        )
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
