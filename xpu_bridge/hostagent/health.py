"""Host agent health: reachability from every RPC's outcome, and a heartbeat's verdict."""

from __future__ import annotations

from dataclasses import dataclass

from xpu_bridge.common.loops import loop_time

# One failed call does not make the agent "down" for readiness; one failing this long does.
READY_TOLERANCE = 2.0
TRANSPORT_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass
class AgentHealth:
    """Fed by reconcile passes, Allocates and repairs alike, and by a heartbeat where the agent
    has one; devices turn Unhealthy after the agent has been down for `unhealthy_after`
    seconds. A heartbeat answering healthy=false counts as down until it answers true,
    whatever other calls do meanwhile."""

    unhealthy_after: float
    failing_creates_limit: int = 0
    """This many CreateBridgePort failures in a row make the node not ready (0: never)."""
    down_since: float | None = None
    unhealthy_since: float | None = None
    failing_creates: int = 0
    last_create_failure: str = ""

    def record(self, reachable: bool, now: float) -> None:
        if reachable:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now

    def report(self, healthy: bool, now: float) -> None:
        """The heartbeat's verdict (the call itself succeeded)."""
        self.record(True, now)
        if healthy:
            self.unhealthy_since = None
        elif self.unhealthy_since is None:
            self.unhealthy_since = now

    def observe(self, code: str, method: str = "") -> None:
        """From the RPC observer: any answer but a transport failure means reachable; a run of
        failing Creates means an agent that answers but cannot attach anything."""
        self.record(code not in TRANSPORT_FAILURES, loop_time())
        if method == "CreateBridgePort":
            if code == "OK":
                self.failing_creates = 0
            else:
                self.failing_creates += 1
                self.last_create_failure = code

    def _down_since(self) -> float | None:
        times = [t for t in (self.down_since, self.unhealthy_since) if t is not None]
        return min(times) if times else None

    def up(self, now: float) -> bool:
        since = self._down_since()
        return since is None or now - since < READY_TOLERANCE

    def devices_unhealthy(self, now: float) -> bool:
        since = self._down_since()
        return since is not None and now - since >= self.unhealthy_after

    def problem(self) -> str:
        """Why the agent counts as down, in operator terms."""
        if self.down_since is None and self.unhealthy_since is not None:
            return "reports itself unhealthy (heartbeat answered healthy=false)"
        return "unreachable"

    def not_ready(self, now: float) -> str | None:
        """Why the node should not get pods because of the agent, or None."""
        if not self.up(now):
            return self.problem()
        limit = self.failing_creates_limit
        if limit and self.failing_creates >= limit:
            return (
                f"refuses ports: the last {self.failing_creates} CreateBridgePort calls failed "
                f"(last: {self.last_create_failure}; hostAgent.failingCreatesUnready {limit})"
            )
        return None

    def unhealthy_reason(self, now: float) -> str | None:
        """Why every device is Unhealthy now, or None."""
        return f"host agent {self.problem()}" if self.devices_unhealthy(now) else None
