"""The fault, soak and bad-input suites: marked `faults` (a quick run skips them with
`-m "not faults"`; `.ci/run` runs everything), and a recorder whose figures end in the run's
summary, from which RELIABILITY.md is written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from records import FaultResult

RESULTS: list[FaultResult] = []
RESULTS_FILE = os.environ.get("XPU_BRIDGE_RELIABILITY_OUT")
"""When set, the run's records are also written there as JSON (one list)."""


@pytest.fixture
def record() -> Iterator[list[FaultResult]]:
    """Append FaultResult(...) to this list; a test that fails before the end records nothing
    (its figures would not be from a passing run)."""
    mine: list[FaultResult] = []
    yield mine
    RESULTS.extend(mine)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("faults and bad input (RELIABILITY.md)")
    terminalreporter.write_line("| fault | backend | runs | outcome | recovery | lost |")
    terminalreporter.write_line("|---|---|---|---|---|---|")
    for result in RESULTS:
        terminalreporter.write_line(result.row())
    if RESULTS_FILE:
        Path(RESULTS_FILE).write_text(json.dumps([asdict(r) for r in RESULTS], indent=1))
