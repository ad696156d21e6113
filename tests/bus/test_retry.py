"""The retry decision: bounded attempts, capped exponential backoff, Retry-After, deadline."""

import pytest

from bus.config.model import RetryPolicy
from bus.retry import backoff, decide

POLICY = RetryPolicy(attempts=5, initial_delay=1.0, multiplier=2.0, max_delay=10.0, jitter="none", deadline=100.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)])
def test_backoff_doubles_and_caps(attempt, delay):
    """Delays grow by the multiplier from the initial delay and stop at max_delay."""
    assert backoff(POLICY, attempt) == delay


def test_full_jitter_scales_by_random():
    """Full jitter picks uniformly between 0 and the capped delay."""
    policy = RetryPolicy(initial_delay=4.0, jitter="full")
    assert backoff(policy, 1, rand=lambda: 0.25) == 1.0


@pytest.mark.parametrize(
    ("attempt", "now", "retry_after", "expect"),
    [
        (1, 0.0, None, (True, 1.0)),
        (4, 0.0, None, (True, 8.0)),
        (5, 0.0, None, (False, "retries exhausted after 5 attempts")),
        (1, 0.0, 7.0, (True, 7.0)),
        (1, 0.0, 60.0, (True, 10.0)),
        (2, 99.0, None, (False, "deadline of 100s would pass before the next attempt")),
    ],
    ids=["first", "fourth", "exhausted", "retry-after", "retry-after-capped", "deadline"],
)
def test_decide(attempt, now, retry_after, expect):
    """Whether and when a failed attempt is retried."""
    d = decide(POLICY, attempt=attempt, first_seen=0.0, now=now, retry_after=retry_after)
    if expect[0]:
        assert (d.retry, d.delay) == expect
    else:
        assert (d.retry, d.reason) == expect
