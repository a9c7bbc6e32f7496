"""The release gate: which ports may go this pass (candidates twice in a row, no guard up)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

from xpu_bridge.hostagent.ports import OperStatus, PortState
from xpu_bridge.release.guards import HoldBack, ReleaseGuards
from xpu_bridge.release.held import HeldPorts
from xpu_bridge.release.stats import ReleaseStats

log = logging.getLogger(__name__)


def release_candidates(
    owned: Mapping[str, PortState],
    held: HeldPorts,
    busy: Callable[[str], bool],
    is_sf: Callable[[str], bool],
) -> set[str]:
    """Owned ports no container holds, not already dying and not busy with an Allocate. While
    a held SF cannot be mapped to its port, no SF port is a candidate."""
    return {
        port_id
        for port_id, port in owned.items()
        if port_id not in held.port_ids
        and port.oper is not OperStatus.TO_BE_DELETED
        and not busy(port_id)
        and not (held.unmapped and is_sf(port_id))
    }


class ReleaseGate:
    """Confirms candidates over two passes and applies the guards; logs when a guard starts
    or stops holding releases back, and counts every held-back pass."""

    def __init__(
        self,
        guards: ReleaseGuards,
        stats: ReleaseStats,
        kubelet_restarted_at: Callable[[], float | None],
    ) -> None:
        self.guards = guards
        self._stats = stats
        self._kubelet_restarted_at = kubelet_restarted_at
        self._previous: set[str] = set()
        self._holding: str | None = None

    def seed(self, candidates: set[str]) -> None:
        """Start-up recovery: ports no container holds count as candidates once already."""
        self._previous = set(candidates)

    def forget(self) -> None:
        self._previous = set()

    def admit(
        self,
        candidates: set[str],
        owned: int,
        now: float,
        unmassed: AbstractSet[str] = frozenset(),
    ) -> set[str]:
        """The candidates that may be released now (none while a guard is up); `unmassed`
        ones (the start-up sweep) do not count towards a mass release."""
        confirmed = candidates & self._previous
        self._previous = set(candidates)
        held_back = self.guards.check(
            len(confirmed),
            owned,
            now,
            self._kubelet_restarted_at(),
            massed=len(confirmed - unmassed),
        )
        if held_back is not None:
            self.hold_back(held_back)
            return set()
        if self._holding is not None:
            log.info("release guard %s lifted", self._holding)
            self._holding = None
        return confirmed

    def hold_back(self, held_back: HoldBack) -> None:
        self._stats.held_back[held_back.guard] += 1
        if self._holding != held_back.guard:
            log.warning("holding back releases: %s", held_back.why)
            self._holding = held_back.guard

    def holdoff_reason(self, now: float) -> str | None:
        held_back = self.guards.holdoff_reason(now, self._kubelet_restarted_at())
        return held_back.why if held_back else None
