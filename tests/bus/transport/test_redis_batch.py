"""RedisBatch (group commit) and Tx against the machine's Redis: order, replies, errors, atomicity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bus.envelope import new_id
from bus.transport.redis_batch import RedisBatch, Tx

from .conftest import REDIS_URL


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    """A client and a fresh key prefix; every key under the prefix is deleted afterwards."""
    client = Redis.from_url(REDIS_URL)
    prefix = f"test-batch-{new_id().lower()}"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_concurrent_calls_share_pipelines_in_order(redis: tuple[Redis, str]) -> None:
    """Calls issued together go in fewer pipelines than calls, run in order, each gets its reply."""
    client, p = redis
    pipelines: list[int] = []

    class Counting(Redis):  # the client is injected: count the pipelines it is asked for
        def pipeline(self, transaction=True, shard_hint=None):
            pipelines.append(1)
            return super().pipeline(transaction, shard_hint)

    batch = RedisBatch(Counting(connection_pool=client.connection_pool))
    replies = await asyncio.gather(*(batch.call("RPUSH", f"{p}:list", i) for i in range(50)))
    assert replies == list(range(1, 51))  # RPUSH answers the new length: issue order kept
    assert 1 <= len(pipelines) < 50
    assert await client.lrange(f"{p}:list", 0, -1) == [str(i).encode() for i in range(50)]


async def test_a_failing_command_fails_only_its_caller(redis: tuple[Redis, str]) -> None:
    """A command the server refuses raises for its caller; the others in the pipeline succeed."""
    client, p = redis
    batch = RedisBatch(client)
    await client.set(f"{p}:str", "x")
    got = await asyncio.gather(
        batch.call("SET", f"{p}:a", "1"),
        batch.call("LPUSH", f"{p}:str", "y"),  # WRONGTYPE
        batch.call("GET", f"{p}:a"),
        return_exceptions=True,
    )
    assert got[0] is True and got[2] == b"1"
    assert "WRONGTYPE" in str(got[1])


async def test_tx_applies_its_commands_in_order_with_exact_values(redis: tuple[Redis, str]) -> None:
    """A Tx runs all its commands in order; floats, ints and bytes read back unchanged."""
    client, p = redis
    batch = RedisBatch(client)
    tx = Tx()
    at = 1764067123.823456
    tx.add("HSET", f"{p}:h", "at", at, "gen", 3, "doc", b'{"a": "\xc3\xa9"}')
    tx.add("ZADD", f"{p}:z", at, "m")
    tx.add("RPUSH", f"{p}:l", "first")
    tx.add("RPUSH", f"{p}:l", "second")
    await batch.apply(tx)
    h = await client.hgetall(f"{p}:h")
    assert float(h[b"at"]) == at and int(h[b"gen"]) == 3
    assert h[b"doc"].decode() == '{"a": "é"}'
    assert await client.zscore(f"{p}:z", "m") == at
    assert await client.lrange(f"{p}:l", 0, -1) == [b"first", b"second"]


async def test_connection_failure_fails_every_caller() -> None:
    """With Redis unreachable, every queued command raises (nobody waits forever)."""
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    batch = RedisBatch(client)
    try:
        got = await asyncio.gather(*(batch.call("GET", f"k{i}") for i in range(3)),
                                   return_exceptions=True)
    finally:
        await client.aclose()
    assert all(isinstance(g, Exception) for g in got), got
