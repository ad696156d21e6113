"""Circuit breaker states with an injected clock: closed → open → half_open → closed/open."""

from __future__ import annotations

import pytest

from bus.breaker import Breakers, CircuitBreaker
from bus.config.model import BreakerPolicy
from bus.observe import Observer

POLICY = BreakerPolicy(failure_ratio=0.5, window=10.0, min_calls=4, cooldown=5.0,
                       half_open_calls=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Gauges(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, dict]] = []

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self.seen.append((name, value, labels))


def breaker(policy: BreakerPolicy = POLICY):
    clock, gauges = Clock(), Gauges()
    return CircuitBreaker("desk", policy, clock=clock, observer=gauges), clock, gauges


def fail(cb: CircuitBreaker, n: int, failed: bool = True) -> None:
    for _ in range(n):
        assert cb.allow() == 0.0
        cb.record(failed=failed)


@pytest.mark.parametrize(("outcomes", "state"), [
    ([True, True, True], "closed"),  # under min_calls
    ([True, False, True, False], "open"),  # 2 of 4 = ratio
    ([True, False, False, False], "closed"),  # 1 of 4 < ratio
], ids=["too-few-calls", "ratio-reached", "ratio-not-reached"])
def test_opens_on_ratio_after_min_calls(outcomes, state):
    """The circuit opens only with min_calls in the window and the failure ratio reached."""
    cb, _, _ = breaker()
    for failed in outcomes:
        fail(cb, 1, failed)
    assert cb.state == state


def test_old_calls_leave_the_window():
    """Failures older than the window do not count."""
    cb, clock, _ = breaker()
    fail(cb, 3)
    clock.now += 11
    fail(cb, 1)
    assert cb.state == "closed"


def test_open_refuses_with_remaining_cooldown_then_half_opens():
    """Open: calls wait the rest of the cool-down; after it one probe goes, others wait."""
    cb, clock, _ = breaker()
    fail(cb, 4)
    clock.now += 2
    assert cb.allow() == pytest.approx(3.0)
    clock.now += 3
    assert cb.state == "half_open"
    assert cb.allow() == 0.0
    assert cb.allow() > 0  # the single probe is out


@pytest.mark.parametrize(("probe_failed", "state"), [(False, "closed"), (True, "open")],
                         ids=["success-closes", "failure-reopens"])
def test_probe_decides(probe_failed, state):
    """A successful probe closes the circuit, a failed one re-opens it for a new cool-down."""
    cb, clock, gauges = breaker()
    fail(cb, 4)
    clock.now += 5
    assert cb.allow() == 0.0
    cb.record(failed=probe_failed)
    assert cb.state == state
    assert [v for _, v, _ in gauges.seen] == [1, 2, 0 if state == "closed" else 1]
    assert gauges.seen[0] == ("circuit_state", 1, {"connector": "desk"})


def test_cancelled_probe_frees_its_slot():
    """A probe allowed but not made (throttled) is given back."""
    cb, clock, _ = breaker()
    fail(cb, 4)
    clock.now += 5
    assert cb.allow() == 0.0
    cb.cancel()
    assert cb.allow() == 0.0


def test_breakers_only_for_connectors_with_a_policy():
    """Breakers.get builds one breaker per connector with a policy, none without."""
    b = Breakers(clock=Clock())
    assert b.get("desk", None) is None
    assert b.get("desk", POLICY) is b.get("desk", POLICY)
