"""Host agent reachability, judged from the outcome of every RPC we make to it."""

from __future__ import annotations

from dataclasses import dataclass

from xpu_bridge.common.loops import loop_time

# One failed call does not make the agent "down" for readiness; one failing this long does.
READY_TOLERANCE = 2.0
TRANSPORT_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass
class AgentHealth:
    """Fed by reconcile passes, Allocates and repairs alike; devices turn Unhealthy after the
    agent has been unreachable for `unhealthy_after` seconds with no success in between."""

    unhealthy_after: float
    down_since: float | None = None

    def record(self, reachable: bool, now: float) -> None:
        if reachable:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now

    def observe(self, code: str) -> None:
        """From the RPC observer: any answer but a transport failure means reachable."""
        self.record(code not in TRANSPORT_FAILURES, loop_time())

    def up(self, now: float) -> bool:
        return self.down_since is None or now - self.down_since < READY_TOLERANCE

    def devices_unhealthy(self, now: float) -> bool:
        return self.down_since is not None and now - self.down_since >= self.unhealthy_after
