"""Throttle: short waits are slept, long ones handed back to reschedule the message."""

from __future__ import annotations

import pytest

from bus.config.model import Rate
from bus.shared.memory import MemoryRateLimiter
from bus.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttle():
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    return Throttle(MemoryRateLimiter(clock), sleep=sleep), clock, slept


async def test_no_rate_never_waits():
    """A connector without rate: is never throttled."""
    t, _, slept = throttle()
    assert [await t.acquire("x", None) for _ in range(100)] == [0.0] * 100
    assert slept == []


async def test_burst_then_short_waits_are_slept():
    """Within burst calls go at once; then a sub-second wait is slept and the call goes."""
    t, _, slept = throttle()
    rate = Rate(per_second=4.0, burst=2.0)
    assert [await t.acquire("x", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert slept == [pytest.approx(0.25)]


async def test_long_wait_is_returned_not_slept():
    """A wait of a second or more comes back to the caller, and no token is taken."""
    t, clock, slept = throttle()
    rate = Rate(per_second=1 / 60, burst=1.0)
    assert await t.acquire("x", rate) == 0.0
    assert await t.acquire("x", rate) == pytest.approx(60.0)
    assert slept == []
    clock.now += 60
    assert await t.acquire("x", rate) == 0.0


async def test_buckets_are_per_connector():
    """Each connector has its own bucket."""
    t, _, _ = throttle()
    rate = Rate(per_second=1 / 60, burst=1.0)
    assert (await t.acquire("a", rate), await t.acquire("b", rate)) == (0.0, 0.0)
