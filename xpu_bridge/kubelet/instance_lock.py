"""One daemon per kubelet directory: an exclusive lock on a file beside the plugin sockets.

Two daemons on one directory would each take the other's sockets away, forever. The kubelet
deletes sockets when it restarts, not other files, so the lock outlives kubelet restarts; the
kernel drops it when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from xpu_bridge.common.errors import StartupError

LOCK_FILE = "xpu-bridge.lock"


class InstanceLock:
    """Held for the daemon's lifetime; the file names the holder's PID for the next one."""

    def __init__(self, kubelet_dir: Path) -> None:
        self.path = kubelet_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """StartupError naming the holder when another daemon has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                [
                    f"--kubelet-dir: another xpu-bridge (pid {holder}) serves {self.path.parent} "
                    f"(it holds {self.path.name}); stop it first: one daemon per node"
                ]
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
