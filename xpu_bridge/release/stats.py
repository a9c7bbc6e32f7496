"""Release counters: what the reconciler released, held back and repaired, for the metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ReleaseStats:
    releases: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(resource, reason) -> ports released; reason is "unheld" or "hook"."""
    held_back: Counter[str] = field(default_factory=Counter)
    """guard -> passes whose releases it held back."""
    repairs: Counter[str] = field(default_factory=Counter)
    """resource -> held devices whose port was re-created."""
    passes: int = 0
