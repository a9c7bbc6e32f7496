"""Release guards: when nothing may be released. Pure decisions; the caller passes the clock.

A blink (PodResources briefly empty, a kubelet restart, the daemon restarting with the
kubelet) must never cost a running pod its network, so each guard holds every release back.
"""

from __future__ import annotations

from dataclasses import dataclass

POD_RESOURCES_UNREADABLE = "pod_resources_unreadable"
STARTUP = "startup"
KUBELET_RESTART = "kubelet_restart"
MASS_RELEASE = "mass_release"
GUARDS = (POD_RESOURCES_UNREADABLE, STARTUP, KUBELET_RESTART, MASS_RELEASE)


@dataclass(frozen=True, slots=True)
class HoldBack:
    """A guard that holds this pass's releases back, and why, in operator terms."""

    guard: str
    why: str


class ReleaseGuards:
    """The start-up and kubelet-restart hold-offs and the mass-release guard."""

    def __init__(self, holdoff_seconds: float) -> None:
        self.holdoff = holdoff_seconds
        self.started_at = float("-inf")
        self._startup_why = ""
        self._mass_since: float | None = None

    def start(self, now: float, kubelet_may_have_restarted: str | None) -> None:
        """The daemon started now. If the kubelet may have restarted with it (why, in
        operator terms), releases wait a hold-off; if not, they need not."""
        if kubelet_may_have_restarted is not None:
            self.started_at = now
            self._startup_why = kubelet_may_have_restarted

    def holdoff_reason(self, now: float, kubelet_restarted_at: float | None) -> HoldBack | None:
        if now - self.started_at < self.holdoff:
            return HoldBack(
                STARTUP,
                f"started {now - self.started_at:.0f}s ago and {self._startup_why}, so the "
                f"kubelet may have restarted with us: no release for {self.holdoff:g}s "
                "(release.holdoffSeconds)",
            )
        if kubelet_restarted_at is not None and now - kubelet_restarted_at < self.holdoff:
            return HoldBack(
                KUBELET_RESTART,
                f"kubelet restarted {now - kubelet_restarted_at:.0f}s ago; no release for "
                f"{self.holdoff:g}s (release.holdoffSeconds)",
            )
        return None

    def check(
        self,
        confirmed: int,
        owned: int,
        now: float,
        kubelet_restarted_at: float | None,
        massed: int | None = None,
    ) -> HoldBack | None:
        """Whether `confirmed` releases out of `owned` ports may go now; `massed` of them
        (default: all) count towards the mass-release guard.

        A mass release (more than one port and more than half of those owned) must persist
        for a whole hold-off; its clock starts only after the other hold-offs, so a
        PodResources that stays empty past a kubelet restart's hold-off still waits its own.
        """
        counted = confirmed if massed is None else massed
        mass = counted > 1 and 2 * counted > owned
        if not mass:
            self._mass_since = None
        if not confirmed:
            return None
        holdoff = self.holdoff_reason(now, kubelet_restarted_at)
        if holdoff is not None:
            return holdoff
        if mass:
            if self._mass_since is None:
                self._mass_since = now
            if now - self._mass_since < self.holdoff:
                return HoldBack(
                    MASS_RELEASE,
                    f"a pass would release {counted} of {owned} owned ports; waiting until "
                    f"that has held for {self.holdoff:g}s (release.holdoffSeconds)",
                )
        return None
