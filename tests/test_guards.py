"""Release guards and the release gate, as pure decisions on a clock the test passes in."""

from __future__ import annotations

import pytest
from builders import pool_device, port_state, sf, vf

from xpu_bridge.hostagent.ports import OperStatus, PortState
from xpu_bridge.release.gate import ReleaseGate, release_candidates
from xpu_bridge.release.guards import (
    KUBELET_RESTART,
    MASS_RELEASE,
    STARTUP,
    ReleaseGuards,
)
from xpu_bridge.release.held import HeldPorts
from xpu_bridge.release.stats import ReleaseStats

Step = tuple[float, int, int, str | None]
"""(now, confirmed, owned) of one check() call, and the guard expected to hold it back."""

GUARD_CASES = [
    pytest.param(
        10,
        0.0,
        None,
        [(0, 1, 4, STARTUP), (9.9, 1, 4, STARTUP), (10, 1, 4, None), (500, 1, 4, None)],
        id="start-up hold-off",
    ),
    pytest.param(
        10,
        -100.0,
        50.0,
        [(50, 1, 4, KUBELET_RESTART), (59.9, 1, 4, KUBELET_RESTART), (60, 1, 4, None)],
        id="kubelet-restart hold-off",
    ),
    pytest.param(
        10,
        0.0,
        5.0,
        [(8, 1, 4, STARTUP), (12, 1, 4, KUBELET_RESTART), (15, 1, 4, None)],
        id="start-up first, then the kubelet restart",
    ),
    pytest.param(
        10,
        None,
        None,
        [(0, 3, 4, MASS_RELEASE), (9.9, 3, 4, MASS_RELEASE), (10, 3, 4, None)],
        id="mass release waits a whole hold-off",
    ),
    pytest.param(
        10,
        0.0,
        None,
        [
            (5, 3, 4, STARTUP),
            (10, 3, 4, MASS_RELEASE),
            (19.9, 3, 4, MASS_RELEASE),
            (20, 3, 4, None),
        ],
        id="mass clock starts after the start-up hold-off",
    ),
    pytest.param(
        10,
        -100.0,
        0.0,
        [
            (1, 4, 4, KUBELET_RESTART),
            (10, 4, 4, MASS_RELEASE),
            (19, 4, 4, MASS_RELEASE),
            (20, 4, 4, None),
        ],
        id="mass clock starts after the kubelet-restart hold-off",
    ),
    pytest.param(
        10,
        None,
        None,
        [
            (0, 3, 4, MASS_RELEASE),
            (5, 1, 4, None),
            (8, 3, 4, MASS_RELEASE),
            (15, 3, 4, MASS_RELEASE),
            (18, 3, 4, None),
        ],
        id="mass verdict resets when a pass is not mass",
    ),
    pytest.param(
        10,
        None,
        None,
        [(0, 3, 4, MASS_RELEASE), (5, 0, 4, None), (12, 3, 4, MASS_RELEASE), (22, 3, 4, None)],
        id="mass verdict resets on a pass with nothing to release",
    ),
    pytest.param(
        10,
        0.0,
        0.0,
        [(0, 0, 4, None), (1, 0, 0, None), (5, 0, 1, None)],
        id="nothing confirmed is never held",
    ),
    pytest.param(
        10,
        None,
        None,
        [(0, 2, 4, None), (1, 3, 6, None), (2, 3, 5, MASS_RELEASE), (3, 2, 3, MASS_RELEASE)],
        id="exactly half is not mass, more than half is",
    ),
    pytest.param(
        10,
        None,
        None,
        [(0, 1, 1, None), (1, 1, 2, None), (2, 2, 2, MASS_RELEASE)],
        id="a single port is never mass",
    ),
    pytest.param(
        0,
        0.0,
        0.0,
        [(0, 4, 4, None), (0, 1, 4, None)],
        id="hold-off 0 holds nothing",
    ),
]


@pytest.mark.parametrize(("holdoff", "started_at", "kubelet_restarted_at", "steps"), GUARD_CASES)
def test_release_guards(
    holdoff: float,
    started_at: float | None,
    kubelet_restarted_at: float | None,
    steps: list[Step],
) -> None:
    guards = ReleaseGuards(holdoff)
    if started_at is not None:
        guards.start(started_at, "the kubelet socket is 3s old")
    for now, confirmed, owned, expected in steps:
        held_back = guards.check(confirmed, owned, now, kubelet_restarted_at)
        assert (held_back.guard if held_back else None) == expected, (now, confirmed, owned)
        if held_back is not None:
            assert "release.holdoffSeconds" in held_back.why
            assert f"{holdoff:g}s" in held_back.why


def test_mass_release_why_counts_the_ports() -> None:
    held_back = ReleaseGuards(120).check(3, 4, 0.0, None)
    assert held_back is not None
    assert "release 3 of 4 owned ports" in held_back.why


def test_holdoff_reason_ignores_mass_and_counts() -> None:
    guards = ReleaseGuards(10)
    guards.start(0.0, "the kubelet socket is 3s old")
    reason = guards.holdoff_reason(4.0, None)
    assert reason is not None and reason.guard == STARTUP
    assert reason.why.startswith("started 4s ago")
    restarted = guards.holdoff_reason(30.0, 25.0)
    assert restarted is not None and restarted.guard == KUBELET_RESTART
    assert restarted.why.startswith("kubelet restarted 5s ago")
    assert guards.holdoff_reason(30.0, 20.0) is None


# The gate: two passes, then the guards.


def gate(holdoff: float = 0.0, kubelet_restarted_at: float | None = None) -> ReleaseGate:
    return ReleaseGate(ReleaseGuards(holdoff), ReleaseStats(), lambda: kubelet_restarted_at)


def test_a_candidate_needs_two_passes_in_a_row() -> None:
    release = gate()
    assert release.admit({"a", "b"}, 4, 0.0) == set()
    assert release.admit({"a", "c"}, 4, 1.0) == {"a"}
    assert release.admit({"a", "c"}, 4, 2.0) == {"a", "c"}


def test_a_candidate_that_disappears_starts_over() -> None:
    release = gate()
    assert release.admit({"a"}, 4, 0.0) == set()
    assert release.admit(set(), 4, 1.0) == set()
    assert release.admit({"a"}, 4, 2.0) == set()
    assert release.admit({"a"}, 4, 3.0) == {"a"}


def test_a_guard_up_admits_nothing_and_counts_each_held_pass() -> None:
    stats = ReleaseStats()
    guards = ReleaseGuards(10)
    guards.start(0.0, "the kubelet socket is 3s old")
    release = ReleaseGate(guards, stats, lambda: None)
    assert release.admit({"a"}, 4, 1.0) == set()
    assert stats.held_back[STARTUP] == 0  # nothing confirmed yet: nothing held back
    assert release.admit({"a"}, 4, 2.0) == set()
    assert release.admit({"a"}, 4, 3.0) == set()
    assert stats.held_back == {STARTUP: 2}
    assert release.admit({"a"}, 4, 10.0) == {"a"}
    assert stats.held_back == {STARTUP: 2}


def test_kubelet_restart_is_read_on_every_pass() -> None:
    restarted: list[float | None] = [None]
    stats = ReleaseStats()
    release = ReleaseGate(ReleaseGuards(10), stats, lambda: restarted[0])
    release.admit({"a"}, 4, 100.0)
    restarted[0] = 95.0
    assert release.admit({"a"}, 4, 101.0) == set()
    assert stats.held_back == {KUBELET_RESTART: 1}
    assert release.holdoff_reason(101.0) is not None
    assert "kubelet restarted 6s ago" in (release.holdoff_reason(101.0) or "")
    assert release.admit({"a"}, 4, 105.0) == {"a"}
    assert release.holdoff_reason(105.0) is None


def test_seed_from_recovery_counts_as_a_first_pass() -> None:
    release = gate()
    release.seed({"a", "b"})
    assert release.admit({"a", "c"}, 4, 0.0) == {"a"}


def test_forget_makes_the_next_pass_a_first_one() -> None:
    release = gate()
    release.seed({"a"})
    release.forget()
    assert release.admit({"a"}, 4, 0.0) == set()
    assert release.admit({"a"}, 4, 1.0) == {"a"}


# Candidates: owned, not held, not dying, not busy, and no SF while a held SF is unmapped.

VF_HELD = pool_device(vf("0000:3b:02.0")).spec
VF_FREE = pool_device(vf("0000:3b:02.1")).spec
VF_DYING = pool_device(vf("0000:3b:02.2")).spec
VF_BUSY = pool_device(vf("0000:3b:02.3")).spec
SF_FREE = pool_device(sf("mlx5_core.sf.2")).spec
OWNED: dict[str, PortState] = {
    VF_HELD.port_id: port_state(VF_HELD),
    VF_FREE.port_id: port_state(VF_FREE),
    VF_DYING.port_id: port_state(VF_DYING, OperStatus.TO_BE_DELETED),
    VF_BUSY.port_id: port_state(VF_BUSY, OperStatus.DOWN),
    SF_FREE.port_id: port_state(SF_FREE),
}


@pytest.mark.parametrize(
    ("held", "busy", "expected"),
    [
        pytest.param(
            HeldPorts({VF_HELD.port_id}, set()),
            set(),
            {VF_FREE.port_id, VF_BUSY.port_id, SF_FREE.port_id},
            id="held and dying ports are no candidates",
        ),
        pytest.param(
            HeldPorts({VF_HELD.port_id}, set()),
            {VF_BUSY.port_id},
            {VF_FREE.port_id, SF_FREE.port_id},
            id="busy ports are no candidates",
        ),
        pytest.param(
            HeldPorts({VF_HELD.port_id}, {"mlx5_core.sf.9"}),
            set(),
            {VF_FREE.port_id, VF_BUSY.port_id},
            id="no SF while a held SF is unmapped",
        ),
        pytest.param(
            HeldPorts(set(OWNED), set()),
            set(),
            set(),
            id="all held",
        ),
    ],
)
def test_release_candidates(held: HeldPorts, busy: set[str], expected: set[str]) -> None:
    candidates = release_candidates(
        OWNED, held, busy.__contains__, lambda port_id: port_id == SF_FREE.port_id
    )
    assert candidates == expected
