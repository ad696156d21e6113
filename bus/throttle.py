"""Throttles per connector: respect a vendor's rate limit without burning retries.

A token bucket per connector (``rate: 700/min``, ``burst:``) kept in a :class:`RateLimiter`
(``bus.shared``): in memory for the embedded engine, in Redis when workers share the limit.
A short wait is slept off; a long one is handed back so the caller reschedules the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bus.config.model import Rate
from bus.shared import RateLimiter
from bus.shared.memory import MemoryRateLimiter

SLEEP_UNDER = 1.0  # seconds: waits shorter than this are slept, longer ones rescheduled


class Throttle:
    def __init__(self, limiter: RateLimiter | None = None, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 sleep_under: float = SLEEP_UNDER):
        self.limiter = limiter or MemoryRateLimiter()
        self.sleep = sleep
        self.sleep_under = sleep_under

    async def acquire(self, connector: str, rate: Rate | None) -> float:
        """Take a token for one call to ``connector``: 0.0 once taken, else the (long) wait."""
        if rate is None:
            return 0.0
        while True:
            wait = await self.limiter.acquire(f"rate:{connector}", rate.per_second, rate.burst)
            if wait <= 0.0:
                return 0.0
            if wait >= self.sleep_under:
                return wait
            await self.sleep(wait)
