"""Redis implementations of the shared-state protocols: correct across processes and machines.

Every key starts with ``{prefix}:``. Claims use ``SET NX EX`` and the token bucket is one Lua
script, so concurrent workers never both win; the bucket's clock is the Redis server's.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from redis.asyncio import Redis

from bus.shared.memory import _check

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] bucket hash; ARGV rate, burst, cost. Returns seconds to wait as a string (0 = granted).
_BUCKET = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisDedupeStore:
    """``{prefix}:dedupe:{key}`` holds the JSON list of ids first accepted under the key.

    A caller that writes more with each claim (the RabbitMQ transport's ledger records) may make
    the claim itself, in its own script, through :meth:`claim_args`; ``release`` undoes either."""

    def __init__(self, redis: Redis, prefix: str):
        self._r = redis
        self._prefix = prefix
        self._release = redis.register_script(_RELEASE)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:dedupe:{key}"

    def claim_args(self, key: str, ids: Sequence[str], ttl: float) -> tuple[str, bytes, int]:
        """(Redis key, value, milliseconds) of the ``SET NX PX`` that claims ``key`` for ``ids``."""
        return self._key(key), orjson.dumps(list(ids)), _ms(ttl)

    async def claim(self, key: str, ids: Sequence[str], ttl: float) -> list[str] | None:
        rkey, value, ms = self.claim_args(key, ids, ttl)
        while True:
            if await self._r.set(rkey, value, nx=True, px=ms):
                return None
            held = await self._r.get(rkey)
            if held is not None:  # else it expired between the two calls: claim again
                return orjson.loads(held)

    async def release(self, key: str, ids: Sequence[str]) -> None:
        await self._release(keys=[self._key(key)], args=[orjson.dumps(list(ids))])


class RedisCache:
    """``{prefix}:cache:{key}`` with a per-key expiry."""

    def __init__(self, redis: Redis, prefix: str):
        self._r = redis
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        return await self._r.get(f"{self._prefix}:cache:{key}")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._r.set(f"{self._prefix}:cache:{key}", value, px=_ms(ttl))

    async def delete(self, key: str) -> None:
        await self._r.delete(f"{self._prefix}:cache:{key}")


class RedisRateLimiter:
    """``{prefix}:bucket:{key}`` hashes (tokens, at), refilled and taken in one Lua call."""

    def __init__(self, redis: Redis, prefix: str):
        self._prefix = prefix
        self._bucket = redis.register_script(_BUCKET)

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        _check(key, rate, burst, cost)
        wait = await self._bucket(keys=[f"{self._prefix}:bucket:{key}"], args=[rate, burst, cost])
        return float(wait)
