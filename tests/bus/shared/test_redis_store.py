"""Shared-state protocols: the in-memory and Redis implementations behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from bus.envelope import new_id
from bus.shared import Cache, DedupeStore, RateLimiter
from bus.shared.memory import MemoryCache, MemoryDedupeStore, MemoryRateLimiter
from bus.shared.redis_store import RedisCache, RedisDedupeStore, RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    """A clock the memory implementations read; Redis ones get real sleeps of the same length."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """One implementation of each protocol plus ``advance(seconds)`` to let time pass."""
    if request.param == "memory":
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield {
            "dedupe": MemoryDedupeStore(clock),
            "cache": MemoryCache(clock),
            "limiter": MemoryRateLimiter(clock),
            "advance": advance,
        }
        return
    redis = Redis.from_url(REDIS_URL)
    prefix = f"test-{new_id().lower()}"
    yield {
        "dedupe": RedisDedupeStore(redis, prefix),
        "cache": RedisCache(redis, prefix),
        "limiter": RedisRateLimiter(redis, prefix),
        "advance": asyncio.sleep,
    }
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def test_implementations_satisfy_protocols() -> None:
    """Every implementation is an instance of its protocol."""
    assert isinstance(MemoryDedupeStore(), DedupeStore) and isinstance(MemoryCache(), Cache)
    assert isinstance(MemoryRateLimiter(), RateLimiter)
    for cls, proto in (
        (RedisDedupeStore, DedupeStore),
        (RedisCache, Cache),
        (RedisRateLimiter, RateLimiter),
    ):
        assert isinstance(cls(Redis.from_url(REDIS_URL), "p"), proto)


async def test_dedupe_first_claim_wins_until_expiry(kit: dict[str, Any]) -> None:
    """claim() returns None for the first caller, the first ids after, and frees the key on expiry."""
    store: DedupeStore = kit["dedupe"]
    assert await store.claim("k", ["a", "b"], 0.3) is None
    assert await store.claim("k", ["c"], 0.3) == ["a", "b"]
    await kit["advance"](0.4)
    assert await store.claim("k", ["c"], 0.3) is None


async def test_dedupe_release_only_own_claim(kit: dict[str, Any]) -> None:
    """release() frees a key held by the same ids and leaves someone else's claim."""
    store: DedupeStore = kit["dedupe"]
    await store.claim("k", ["a"], 60)
    await store.release("k", ["other"])
    assert await store.claim("k", ["b"], 60) == ["a"]
    await store.release("k", ["a"])
    assert await store.claim("k", ["b"], 60) is None


async def test_concurrent_claims_accept_one(kit: dict[str, Any]) -> None:
    """Of many concurrent claims on one key exactly one wins."""
    store: DedupeStore = kit["dedupe"]
    results = await asyncio.gather(*(store.claim("k", [str(i)], 60) for i in range(20)))
    assert results.count(None) == 1


async def test_cache_get_set_expire_delete(kit: dict[str, Any]) -> None:
    """A cached value is returned until its ttl passes or it is deleted."""
    cache: Cache = kit["cache"]
    await cache.set("a", b"1", 0.3)
    await cache.set("b", b"2", 60)
    assert (await cache.get("a"), await cache.get("b"), await cache.get("c")) == (b"1", b"2", None)
    await kit["advance"](0.4)
    await cache.delete("b")
    assert (await cache.get("a"), await cache.get("b")) == (None, None)


async def test_rate_limiter_burst_then_wait(kit: dict[str, Any]) -> None:
    """A bucket grants its burst at once, then asks to wait about cost/rate, then refills."""
    limiter: RateLimiter = kit["limiter"]
    assert [await limiter.acquire("sms", 10, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.acquire("sms", 10, 3)
    assert 0 < wait <= 0.1
    await kit["advance"](0.25)
    assert await limiter.acquire("sms", 10, 3) == 0.0
    assert await limiter.acquire("other", 10, 3) == 0.0  # buckets are per key


@pytest.mark.parametrize(
    ("rate", "burst", "cost"),
    [(0, 1, 1), (1, 0, 1), (1, 1, 2)],
    ids=["no-rate", "no-burst", "cost>burst"],
)
async def test_rate_limiter_refuses_impossible_buckets(
    kit: dict[str, Any], rate: float, burst: float, cost: float
) -> None:
    """A bucket that could never grant is refused with the fix in the message."""
    with pytest.raises(ValueError, match="raise burst or lower cost"):
        await kit["limiter"].acquire("x", rate, burst, cost)
