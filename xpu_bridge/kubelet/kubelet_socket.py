"""The kubelet's own socket: whether it is there, and whether a new one means a restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xpu_bridge.common.loops import loop_time

log = logging.getLogger(__name__)

KUBELET_SOCKET = "kubelet.sock"


class KubeletSocketWatch:
    """A kubelet restart re-creates kubelet.sock; its inode and ctime tell one from another,
    even when the socket was missing for a while in between."""

    def __init__(self, kubelet_dir: Path) -> None:
        self.path = kubelet_dir / KUBELET_SOCKET
        self.restarts = 0
        self.last_restart: float | None = None
        self._known: tuple[int, int] | None = None
        self._seen = False

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_ctime_ns)

    def present(self) -> bool:
        return self._known is not None

    def changed(self) -> bool:
        """Look again; True when the socket appeared, vanished or was replaced since."""
        identity = self._identity()
        if identity == self._known:
            return False
        if identity is not None and self._seen:
            self.restarts += 1
            self.last_restart = loop_time()
            log.warning("kubelet restarted (new %s); registering again", self.path)
        self._known = identity
        self._seen = self._seen or identity is not None
        return True
