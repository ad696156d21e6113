"""RedisBatch (group commit) and Tx against the machine's Redis: order, replies, errors, atomicity."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Connection, ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    """Calls issued together go in fewer round trips than calls, run in order, each gets its reply."""
    _, p = redis
    trips: list[int] = []

    class Counting(Connection):  # the client is injected: count the writes it makes
        async def send_packed_command(self, *args, **kwargs):
            trips.append(1)
            return await super().send_packed_command(*args, **kwargs)

    client = Redis(connection_pool=ConnectionPool.from_url(REDIS_URL, connection_class=Counting))
    try:
        batch = RedisBatch(client)
        replies = await asyncio.gather(*(batch.call("RPUSH", f"{p}:list", i) for i in range(50)))
        assert replies == list(range(1, 51))  # RPUSH answers the new length: issue order kept
        assert 1 <= len(trips) < 50
        assert await client.lrange(f"{p}:list", 0, -1) == [str(i).encode() for i in range(50)]
        await batch.aclose()
    finally:
        await client.aclose()


async def test_replies_read_as_redis_py_reads_them(redis: tuple[Redis, str]) -> None:
    """Each reply gets the client's response callback (SET → True, HGETALL → dict), as
    ``execute_command`` would give it; a word Redis has no type for fails only its own call."""
    client, p = redis
    batch = RedisBatch(client)
    got = await asyncio.gather(
        batch.call("SET", f"{p}:s", "v"),
        batch.call("HSET", f"{p}:h", "f", 1.5),
        batch.call("HGETALL", f"{p}:h"),
        batch.call("SET", f"{p}:n", None),
        batch.call("GET", f"{p}:s"),
        return_exceptions=True,
    )
    assert got[:3] == [True, 1, {b"f": b"1.5"}] and got[4] == b"v"
    assert isinstance(got[3], DataError)


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


async def test_tx_refused_while_queueing_applies_nothing(redis: tuple[Redis, str]) -> None:
    """A command Redis refuses as it is queued (wrong arity): the Tx raises, none of it applies,
    and the commands pipelined around it get their own replies."""
    client, p = redis
    batch = RedisBatch(client)
    tx = Tx()
    tx.add("SET", f"{p}:a", "1")
    tx.add("HSET", f"{p}:h")  # no field, no value
    before = batch.call("SET", f"{p}:before", "x")
    applying = asyncio.ensure_future(batch.apply(tx))
    after = batch.call("GET", f"{p}:before")
    with pytest.raises(ResponseError, match="transaction not applied"):
        await applying
    assert (await before, await after) == (True, b"x")
    assert await client.exists(f"{p}:a", f"{p}:h") == 0


async def test_tx_command_failing_as_it_runs_fails_the_call(redis: tuple[Redis, str]) -> None:
    """A command that fails as it runs (wrong type) makes apply raise; the others stand, as
    they would in a Lua script up to its failing call."""
    client, p = redis
    await client.hset(f"{p}:h", "f", "v")
    batch = RedisBatch(client)
    tx = Tx()
    tx.add("SET", f"{p}:a", "1")
    tx.add("RPUSH", f"{p}:h", "x")  # a hash, not a list
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await batch.apply(tx)
    assert await client.get(f"{p}:a") == b"1"


async def test_connection_failure_fails_every_caller() -> None:
    """With Redis unreachable, every queued command raises (nobody waits forever)."""
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    batch = RedisBatch(client)
    try:
        got = await asyncio.gather(
            *(batch.call("GET", f"k{i}") for i in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(g, Exception) for g in got), got


async def test_claim_writes_only_when_it_wins(redis: tuple[Redis, str]) -> None:
    """claim() sets the key and runs its commands only if the key was free; else it answers the
    value held and writes nothing."""
    client, p = redis
    batch = RedisBatch(client)
    won, lost = Tx(), Tx()
    won.add("SET", f"{p}:won", "1")
    lost.add("SET", f"{p}:lost", "1")
    first, second = await asyncio.gather(
        batch.claim(f"{p}:key", b'["a"]', 60_000, won),
        batch.claim(f"{p}:key", b'["b"]', 60_000, lost),
    )
    assert (first, second) == (None, b'["a"]')
    assert (await client.get(f"{p}:won"), await client.get(f"{p}:lost")) == (b"1", None)
    assert 0 < await client.pttl(f"{p}:key") <= 60_000


async def test_script_not_cached_by_the_server_is_sent_whole(redis: tuple[Redis, str]) -> None:
    """A script Redis has not seen (NOSCRIPT on EVALSHA) still runs: its text is sent once."""
    client, p = redis
    batch = RedisBatch(client)
    source = f"-- {p}\nreturn ARGV[1]"  # unique text: never cached before this test
    sha = hashlib.sha1(source.encode()).hexdigest()
    assert await client.script_exists(sha) == [False]
    assert await batch.script(source, "hello") == b"hello"
    assert await client.script_exists(sha) == [True]
    assert await batch.script(source, "again") == b"again"


async def test_script_soon_runs_in_order_and_survives_noscript(redis: tuple[Redis, str]) -> None:
    """An uncached script is sent whole, its reply kept for the caller; a cached one is queued
    at once, ahead of a later call."""
    client, p = redis
    batch = RedisBatch(client)
    source = f"-- {p}\nredis.call('RPUSH', ARGV[1], ARGV[2]) return ARGV[2]"
    assert await client.script_exists(hashlib.sha1(source.encode()).hexdigest()) == [False]
    assert await batch.script_soon(source, f"{p}:first", "uncached") == b"uncached"
    first = batch.script_soon(source, f"{p}:order", "script")
    second = batch.call("RPUSH", f"{p}:order", "call")
    assert await second == 2 and await first == b"script"
    assert await client.lrange(f"{p}:order", 0, -1) == [b"script", b"call"]
    failing = batch.script_soon("return redis.error_reply('no such luck')")
    with pytest.raises(Exception, match="no such luck"):
        await failing


@pytest.mark.parametrize("idle_check", [0.0, 1e9], ids=["checked", "unchecked"])
async def test_connection_closed_while_idle_is_replaced(
    redis: tuple[Redis, str], idle_check: float
) -> None:
    """The server closing the batch's connection between calls (an idle timeout, a restart) is
    found before the next write, which goes on a new connection; unchecked, that call fails."""
    client, p = redis
    batch = RedisBatch(client, idle_check=idle_check)
    cid = await batch.call("CLIENT", "ID")
    await client.client_kill_filter(_id=cid)
    if idle_check:
        with pytest.raises(RedisConnectionError):
            await batch.call("SET", f"{p}:k", "v")
        return
    assert await batch.call("SET", f"{p}:k", "v") is True
    assert await batch.call("CLIENT", "ID") != cid


async def test_a_reply_split_on_the_wire_is_read_whole_and_silence_times_out() -> None:
    """Against a server that sends the first reply in two pieces and then goes quiet: the first
    call gets its whole reply, the others fail with redis-py's TimeoutError after
    ``socket_timeout`` (they do not wait forever), and the next call connects afresh."""
    connections = 0

    async def half_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while b"GET" not in (got := await reader.read(65536)):  # redis-py's handshake
            if b"HELLO" in got:
                writer.write(b"%1\r\n$5\r\nproto\r\n:3\r\n")  # RESP3, as Redis 7 answers
            else:  # CLIENT SETINFO, CLIENT MAINT_NOTIFICATIONS: one answer a command
                writer.write(b"+OK\r\n" * got.count(b"*"))
        writer.write(b"$5\r\nhel")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"lo\r\n")  # the first reply, completed; nothing for the rest
        await writer.drain()
        await reader.read(65536)  # until the client hangs up

    server = await asyncio.start_server(half_then_silence, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
    batch = RedisBatch(client)
    try:
        got = await asyncio.wait_for(
            asyncio.gather(*(batch.call("GET", "k") for _ in range(3)), return_exceptions=True), 5
        )
        assert got[0] == b"hello"
        assert all(isinstance(g, RedisTimeoutError) for g in got[1:]), got
        again = await asyncio.wait_for(
            asyncio.gather(batch.call("GET", "k"), return_exceptions=True), 5
        )
        assert again == [b"hello"] and connections == 2
    finally:
        await client.aclose()
        server.close()
