"""Shared state that must be cluster-wide in the distributed mode: dedupe keys, caches, rate limits.

Each concern is a small protocol with two implementations: in memory (``bus.shared.memory``,
for the embedded engine, one process) and Redis (``bus.shared.redis_store``, any number of
workers). Throttles and sync-flow caches take the protocol, not a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class DedupeStore(Protocol):
    """First writer wins: remembers which ids were accepted under a key for ``ttl`` seconds."""

    async def claim(self, key: str, ids: Sequence[str], ttl: float) -> list[str] | None:
        """Claim ``key`` for ``ids``; None if claimed now, else the ids that hold it already."""
        ...

    async def release(self, key: str, ids: Sequence[str]) -> None:
        """Undo a claim of ``ids`` (their publish failed), leaving anyone else's claim alone."""
        ...


@runtime_checkable
class Cache(Protocol):
    """Bytes under a key, each with its own time to live."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, key: str) -> None: ...


@runtime_checkable
class RateLimiter(Protocol):
    """Token buckets by key: ``rate`` tokens a second, at most ``burst`` saved up."""

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0.0, or take nothing and return the seconds to wait
        before the bucket holds enough (then call again)."""
        ...


__all__ = ["Cache", "DedupeStore", "RateLimiter"]
