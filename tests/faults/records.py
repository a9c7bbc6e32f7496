"""The figures a fault, soak or bad-input test records for RELIABILITY.md: one row per fault
and backend. A plain module, so that tests import it by name (`from records import
FaultResult`): `from conftest import ...` finds whichever conftest.py pytest loaded last."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FaultResult:
    """One fault or bad input, tried `runs` times against one backend."""

    fault: str
    backend: str
    runs: int
    outcome: str
    recovery_seconds: list[float] = field(default_factory=list)
    lost: str = "nothing"
    """What was lost: a port deleted while held, a device given twice... must stay "nothing"."""

    def row(self) -> str:
        times = sorted(self.recovery_seconds)
        recovery = f"{times[len(times) // 2]:.2f} s median, {times[-1]:.2f} s max" if times else "-"
        return (
            f"| {self.fault} | {self.backend} | {self.runs} | {self.outcome} | {recovery} "
            f"| {self.lost} |"
        )
