"""Circuit breakers per connector: stop calling a vendor that keeps failing, probe, recover.

    closed ──(failure_ratio of ≥ min_calls in window)──▶ open ──(cooldown)──▶ half_open
       ▲                                                  ▲                      │
       └──────────── a probe succeeds ────────────────────┴── a probe fails ─────┘

Only retryable failures count: a permanent error means the vendor answered. State is
in memory, per process (each worker protects itself); the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from bus.config.model import BreakerPolicy
from bus.observe import Observer

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_GAUGE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
PROBE_WAIT = 1.0  # seconds a call waits while the half-open probes are out


class CircuitBreaker:
    def __init__(self, name: str, policy: BreakerPolicy, *,
                 clock: Callable[[], float] = time.monotonic, observer: Observer | None = None):
        self.name, self.policy, self.clock = name, policy, clock
        self.observer = observer or Observer()
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._state = CLOSED
        self._opened_at = 0.0
        self._probes = 0  # half-open calls let through and not yet recorded

    @property
    def state(self) -> str:
        """closed | open | half_open (open turns half_open once the cool-down is over)."""
        if self._state == OPEN and self.clock() - self._opened_at >= self.policy.cooldown:
            self._set(HALF_OPEN)
            self._probes = 0
        return self._state

    def allow(self) -> float:
        """0.0 if a call may go now (a half-open probe is then taken), else seconds to wait."""
        state = self.state
        if state == CLOSED:
            return 0.0
        if state == OPEN:
            return max(0.0, self._opened_at + self.policy.cooldown - self.clock())
        if self._probes < self.policy.half_open_calls:
            self._probes += 1
            return 0.0
        return PROBE_WAIT

    def cancel(self) -> None:
        """A call allowed by :meth:`allow` was not made after all (e.g. throttled)."""
        if self._state == HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def record(self, failed: bool) -> None:
        """The outcome of an allowed call: ``failed`` for a retryable failure only."""
        now = self.clock()
        if self._state == HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            if failed:
                self._open(now)
            else:
                self._calls.clear()
                self._set(CLOSED)
            return
        if self._state == OPEN:
            return  # a call from before it opened: the decision is made
        self._calls.append((now, failed))
        while self._calls and self._calls[0][0] <= now - self.policy.window:
            self._calls.popleft()
        total = len(self._calls)
        failures = sum(1 for _, f in self._calls if f)
        if total >= self.policy.min_calls and failures / total >= self.policy.failure_ratio:
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._calls.clear()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        self._state = state
        self.observer.gauge("circuit_state", _GAUGE[state], connector=self.name)


class Breakers:
    """One breaker per connector that declares ``circuit_breaker:``, made on first use."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 observer: Observer | None = None):
        self.clock, self.observer = clock, observer or Observer()
        self.by_connector: dict[str, CircuitBreaker] = {}

    def get(self, connector: str, policy: BreakerPolicy | None) -> CircuitBreaker | None:
        if policy is None:
            return None
        breaker = self.by_connector.get(connector)
        if breaker is None:
            breaker = CircuitBreaker(connector, policy, clock=self.clock, observer=self.observer)
            self.by_connector[connector] = breaker
        return breaker
