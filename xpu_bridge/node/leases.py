"""Device leases: who is attaching a device, when it was last attached, and its release lock.

This is the one place that owns the race between Allocate and release. PodResources lists a
container only after Allocate returns, so without leases a release pass could take the port
of a pod that is still being admitted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType

from xpu_bridge.common.loops import loop_time


class DeviceLeases:
    """Attaching and attached-at marks, and per-device release locks, for every pool. Its
    clock is the node's: release passes judge grace periods and hold-offs by it too."""

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = loop_time) -> None:
        self.grace_seconds = grace_seconds
        self.now = clock
        self._attaching: Counter[str] = Counter()
        self._attached_at: dict[str, float] = {}
        self._release_locks: dict[str, asyncio.Lock] = {}

    def attaching(self, device_ids: Iterable[str]) -> Attaching:
        """Around one Allocate: from entry on, releases of these devices back off; a release
        already in flight finishes first; a clean exit marks them attached now."""
        return Attaching(self, sorted(set(device_ids)))

    def release_lock(self, device_id: str) -> asyncio.Lock:
        """Held by whoever deletes the device's port, from its last busy() check until the
        delete is done; attaching() waits for it, so a port an Allocate hands out is never
        one that a release already in flight is about to delete."""
        lock = self._release_locks.get(device_id)
        if lock is None:
            lock = self._release_locks[device_id] = asyncio.Lock()
        return lock

    def is_attaching(self, device_id: str) -> bool:
        return device_id in self._attaching

    def was_attached(self, device_id: str) -> bool:
        """Attached by an Allocate of this daemon and not released since."""
        return device_id in self._attached_at

    def recently_attached(self, device_id: str) -> bool:
        """True while an Allocate for the device runs, and for the grace period after it."""
        if device_id in self._attaching:
            return True
        attached = self._attached_at.get(device_id)
        return attached is not None and self.now() - attached < self.grace_seconds

    def busy(self, device_id: str, since: float) -> bool:
        """Recently attached, or attached at or after `since` (when PodResources was read: a
        pass can outlast the grace period while it deletes)."""
        return (
            self.recently_attached(device_id)
            or self._attached_at.get(device_id, float("-inf")) >= since
        )

    def released(self, device_id: str) -> None:
        self._attached_at.pop(device_id, None)


class Attaching:
    """One Allocate's lease on its devices (DeviceLeases.attaching). A plain class, not a
    generator-based context manager: it is entered on every Allocate."""

    __slots__ = ("_ids", "_leases")

    def __init__(self, leases: DeviceLeases, ids: list[str]) -> None:
        self._leases = leases
        self._ids = ids

    async def __aenter__(self) -> None:
        leases = self._leases
        leases._attaching.update(self._ids)
        try:
            for device_id in self._ids:
                lock = leases._release_locks.get(device_id)
                if lock is not None and lock.locked():
                    async with lock:
                        pass
        except BaseException:
            self._end()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            now = self._leases.now()
            for device_id in self._ids:
                self._leases._attached_at[device_id] = now
        self._end()

    def _end(self) -> None:
        attaching = self._leases._attaching
        attaching.subtract(self._ids)
        for device_id in self._ids:
            if attaching[device_id] <= 0:
                del attaching[device_id]
