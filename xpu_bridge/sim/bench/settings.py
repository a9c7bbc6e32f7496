"""What one `xpu-bridge bench` run measures: rounds, device counts, durations (full or --quick)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FULL_SIZES = (256, 1024, 4096, 16384)
QUICK_SIZES = (256, 1024, 4096)


@dataclass(frozen=True)
class BenchSettings:
    quick: bool = False
    rounds: int = 1000
    """Sequential single-device Allocates per agent behaviour."""
    repeats: int = 3
    """Allocate runs per agent behaviour, each with a fresh agent and daemon: the median
    run is reported, each ratio measured within one run."""
    sizes: tuple[int, ...] = FULL_SIZES
    churn_seconds: float = 60.0
    help_runs: int = 7
    unhealthy_after: float = 1.0
    """hostAgent.unhealthyAfterSeconds in the scale runs."""
    release_interval: float = 1.0
    """release.intervalSeconds in the scale runs (the port-ERROR check runs once a pass)."""
    churn_delay: float = 0.001
    out: Path | None = None
    plots: Path | None = None

    @classmethod
    def make(
        cls,
        *,
        quick: bool,
        rounds: int | None,
        repeats: int | None = None,
        sizes: tuple[int, ...] | None,
        churn_seconds: float | None,
        out: Path | None,
        plots: Path | None,
    ) -> BenchSettings:
        """Flags given win over what --quick implies."""
        return cls(
            quick=quick,
            rounds=rounds if rounds is not None else (200 if quick else 1000),
            repeats=repeats if repeats is not None else (2 if quick else 3),
            sizes=sizes if sizes is not None else (QUICK_SIZES if quick else FULL_SIZES),
            churn_seconds=churn_seconds if churn_seconds is not None else (6.0 if quick else 60.0),
            help_runs=3 if quick else 7,
            out=out,
            plots=plots,
        )
