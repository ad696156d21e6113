"""Retry policy as a pure decision: given an error and an envelope, retry when, or give up why.

Kept outside the runner so the policy can be tested without a transport or an event loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bus.config.model import RetryPolicy


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""  # why not, when retry is False


def backoff(policy: RetryPolicy, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Delay before try ``attempt + 1``: exponential from ``initial_delay``, capped, optional full jitter."""
    raw = policy.initial_delay * (policy.multiplier ** max(0, attempt - 1))
    capped = min(policy.max_delay, raw)
    return capped * rand() if policy.jitter == "full" else capped


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    first_seen: float,
    now: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Whether the try numbered ``attempt`` (1-based) that just failed retryably gets another."""
    if attempt >= policy.attempts:
        return Decision(False, reason=f"retries exhausted after {attempt} attempts")
    delay = backoff(policy, attempt, rand)
    if retry_after is not None:
        # The vendor said when; never earlier than that, but our cap still bounds waiting.
        delay = max(delay, min(retry_after, policy.max_delay))
    if policy.deadline is not None and now + delay > first_seen + policy.deadline:
        return Decision(False, reason=f"deadline of {policy.deadline:g}s would pass before the next attempt")
    return Decision(True, delay=delay)
