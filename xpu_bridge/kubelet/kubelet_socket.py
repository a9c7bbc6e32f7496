"""The kubelet's own socket: whether it is there, and whether a new one means a restart."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from xpu_bridge.common.loops import loop_time

log = logging.getLogger(__name__)

KUBELET_SOCKET = "kubelet.sock"
MISSING_WARNING_EVERY = 30.0


class KubeletSocketWatch:
    """A kubelet restart re-creates kubelet.sock; its inode and ctime tell one from another,
    even when the socket was missing for a while in between."""

    def __init__(self, kubelet_dir: Path) -> None:
        self.path = kubelet_dir / KUBELET_SOCKET
        self.restarts = 0
        self.last_restart: float | None = None
        self._known: tuple[int, int] | None = None
        self._seen = False
        self._warned_at: float | None = None

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_ctime_ns)

    def present(self) -> bool:
        return self._known is not None

    def warn_while_missing(self) -> None:
        """A typo'd --kubelet-dir or a kubelet that never comes must not be silent."""
        now = loop_time()
        if self._warned_at is None or now - self._warned_at >= MISSING_WARNING_EVERY:
            self._warned_at = now
            log.warning(
                "no kubelet socket at %s; waiting for the kubelet (is --kubelet-dir right?)",
                self.path,
            )

    def age(self) -> float | None:
        """Seconds since the kubelet created its socket, None if there is none."""
        try:
            created = os.stat(self.path).st_ctime
        except OSError:
            return None
        return max(0.0, time.time() - created)

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
