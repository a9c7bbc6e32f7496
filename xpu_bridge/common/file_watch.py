"""Watching one file for new content: its resolved target and stat, then its content's hash.

A ConfigMap mounted as a directory changes by a symlink swap (`config.yaml -> ..data/...`,
`..data -> ..2024_05_01...`), so the file is followed to its target: a new target, inode,
size or mtime means reading it again, and only a different SHA-256 counts as a change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MISSING = "missing"
"""The digest of a file that cannot be read."""


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What tells one version of a file from the next without reading it."""

    target: str
    inode: int
    size: int
    mtime_ns: int


def file_version(path: Path) -> FileVersion | None:
    """None when the file (or a link on the way to it) is missing or unreadable."""
    try:
        target = os.path.realpath(path)
        status = os.stat(target)
    except OSError:
        return None
    return FileVersion(target, status.st_ino, status.st_size, status.st_mtime_ns)


def file_digest(path: Path) -> str:
    """SHA-256 of the content, hex; MISSING when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return MISSING


class FileWatch:
    """Polled by its owner; reads the file only when its version changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._version = file_version(path)
        self.digest = file_digest(path)

    def changed(self) -> bool:
        """Whether the content differs from what the last call (or construction) saw."""
        version = file_version(self.path)
        if version == self._version and version is not None:
            return False
        self._version = version
        digest = file_digest(self.path) if version is not None else MISSING
        if digest == self.digest:
            return False
        self.digest = digest
        return True

    def refresh(self) -> str:
        """Take the file as it is now as seen (a reload asked for by other means reads it)."""
        self._version = file_version(self.path)
        self.digest = file_digest(self.path)
        return self.digest
