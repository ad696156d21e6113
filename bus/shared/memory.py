"""In-process implementations of the shared-state protocols, for the embedded engine and tests.

State lives on the instance (never module globals); ``clock`` is injectable so expiry and
refill are testable without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class MemoryDedupeStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._keys: dict[str, tuple[list[str], float]] = {}

    async def claim(self, key: str, ids: Sequence[str], ttl: float) -> list[str] | None:
        now = self._clock()
        held = self._keys.get(key)
        if held is not None and held[1] > now:
            return list(held[0])
        self._keys[key] = (list(ids), now + ttl)
        return None

    async def release(self, key: str, ids: Sequence[str]) -> None:
        held = self._keys.get(key)
        if held is not None and held[0] == list(ids):
            del self._keys[key]


class MemoryCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._items: dict[str, tuple[bytes, float]] = {}

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._items[key]
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._items[key] = (value, self._clock() + ttl)

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)


class MemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        _check(key, rate, burst, cost)
        now = self._clock()
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / rate


def _check(key: str, rate: float, burst: float, cost: float) -> None:
    """Refuse buckets that could never grant ``cost`` (shared by both implementations)."""
    if rate <= 0 or burst <= 0 or cost > burst:
        raise ValueError(
            f"rate limiter {key!r}: need rate > 0 and 0 < cost <= burst, got rate={rate}, "
            f"burst={burst}, cost={cost}; raise burst or lower cost"
        )
