"""Device leases: attaching and attached-at marks, the grace period, and the release lock."""

from __future__ import annotations

import asyncio

import pytest
from fakes import Clock

from xpu_bridge.node.leases import DeviceLeases

A, B = "0000:3b:02.0", "0000:3b:02.1"


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


async def test_attaching_marks_the_devices_while_it_runs(clock: Clock) -> None:
    leases = DeviceLeases(0, clock)
    assert not leases.is_attaching(A) and not leases.recently_attached(A)
    async with leases.attaching([A, B, A]):
        assert leases.is_attaching(A) and leases.is_attaching(B)
        assert leases.recently_attached(A)  # even with no grace period
        assert leases.busy(A, since=clock() + 1)
        assert not leases.was_attached(A)
    assert not leases.is_attaching(A) and not leases.is_attaching(B)


async def test_overlapping_attaches_keep_the_mark_until_the_last_ends(clock: Clock) -> None:
    leases = DeviceLeases(0, clock)
    async with leases.attaching([A]):
        async with leases.attaching([A]):
            pass
        assert leases.is_attaching(A)
    assert not leases.is_attaching(A)


async def test_a_clean_exit_marks_attached_now(clock: Clock) -> None:
    leases = DeviceLeases(30, clock)
    async with leases.attaching([A]):
        clock.advance(5)  # the attach takes time: attached_at is when it ends
    assert leases.was_attached(A)
    assert leases.busy(A, since=105.0)
    assert not leases.was_attached(B)


async def test_an_attach_that_raises_marks_nothing(clock: Clock) -> None:
    leases = DeviceLeases(30, clock)
    with pytest.raises(RuntimeError):
        async with leases.attaching([A]):
            raise RuntimeError("attach failed")
    assert not leases.was_attached(A)
    assert not leases.is_attaching(A)
    assert not leases.recently_attached(A)


@pytest.mark.parametrize(
    ("after", "recent"), [(0.0, True), (29.9, True), (30.0, False), (300.0, False)]
)
async def test_recently_attached_lasts_the_grace_period(
    clock: Clock, after: float, recent: bool
) -> None:
    leases = DeviceLeases(30, clock)
    async with leases.attaching([A]):
        pass
    clock.advance(after)
    assert leases.recently_attached(A) is recent
    assert not leases.recently_attached(B)


@pytest.mark.parametrize(
    ("since", "busy"),
    [(99.0, True), (100.0, True), (100.5, False)],
)
async def test_busy_means_attached_at_or_after_since(
    clock: Clock, since: float, busy: bool
) -> None:
    leases = DeviceLeases(0, clock)
    async with leases.attaching([A]):
        pass
    clock.advance(60)
    assert not leases.recently_attached(A)
    assert leases.busy(A, since) is busy
    assert not leases.busy(B, since)


async def test_busy_within_grace_whatever_since(clock: Clock) -> None:
    leases = DeviceLeases(30, clock)
    async with leases.attaching([A]):
        pass
    clock.advance(10)
    assert leases.busy(A, since=clock() + 100)


async def test_released_forgets_the_attach(clock: Clock) -> None:
    leases = DeviceLeases(30, clock)
    async with leases.attaching([A, B]):
        pass
    leases.released(A)
    assert not leases.was_attached(A)
    assert not leases.recently_attached(A)
    assert not leases.busy(A, since=0.0)
    assert leases.was_attached(B)
    leases.released("never-attached")


async def test_attaching_waits_for_a_release_in_flight(clock: Clock) -> None:
    leases = DeviceLeases(0, clock)
    lock = leases.release_lock(A)
    assert leases.release_lock(A) is lock
    entered = asyncio.Event()

    async def allocate() -> None:
        async with leases.attaching([A, B]):
            entered.set()

    async with lock:
        task = asyncio.create_task(allocate())
        for _ in range(20):  # let the task run as far as it can: up to the lock
            await asyncio.sleep(0)
        assert not entered.is_set()
        assert leases.is_attaching(A)  # releases back off from the start of the Allocate
        assert leases.recently_attached(B)
    await task
    assert entered.is_set()
    assert leases.was_attached(A) and leases.was_attached(B)
