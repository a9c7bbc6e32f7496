"""Summaries of timing samples: percentiles and ratios, in milliseconds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from xpu_bridge.sim.bench.docs import Percentiles


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank on the sorted samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> Percentiles:
    """p50, p99 and mean of samples given in seconds, as milliseconds."""
    return Percentiles(
        p50=round(percentile(seconds, 50) * 1000, 4),
        p99=round(percentile(seconds, 99) * 1000, 4),
        mean=round(statistics.fmean(seconds) * 1000, 4),
        count=len(seconds),
    )


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / max(denominator, 1e-9), 3)


def as_ms(seconds: Sequence[float]) -> list[float]:
    return [round(s * 1000, 4) for s in seconds]
