"""RabbitMQ-specific behaviour: topology, confirms, delay tiers, broker restart, worker crash."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from redis.asyncio import Redis

from bus.envelope import Envelope, new_id
from bus.errors import TransportError
from bus.transport.base import Delivery, MessageState
from bus.transport.rabbitmq import RabbitTransport
from bus.transport.rabbitmq_delivery import out
from bus.transport.rabbitmq_publisher import H_ATTEMPT, H_CORRELATION, H_CURSOR, H_FLOW

from .conftest import AMQP_URL, REDIS_URL, Recorder, complete, remove_rabbit

CHILD = Path(__file__).with_name("rabbit_child.py")
ROOT = Path(__file__).resolve().parents[3]

Make = Callable[..., Awaitable[RabbitTransport]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Starts RabbitTransports (a fresh prefix unless given); closes them and removes what they made."""
    made: list[RabbitTransport] = []

    async def build(**options: Any) -> RabbitTransport:
        options.setdefault("prefix", f"test-{new_id().lower()}")
        transport = RabbitTransport(AMQP_URL, REDIS_URL, **options)
        await transport.start()
        made.append(transport)
        return transport

    yield build
    for transport in made:
        await transport.close(timeout=1.0)
    cleaned: set[str] = set()
    for transport in made:
        if transport.names.prefix not in cleaned:
            cleaned.add(transport.names.prefix)
            await remove_rabbit(transport)


async def _exists(kind: str, name: str) -> bool:
    """Whether exchange/queue ``name`` exists (passive declare on a throwaway channel)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            if kind == "exchange":
                await channel.declare_exchange(name, passive=True)
            else:
                await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
    return True


async def test_topology_names_declared(make: Make) -> None:
    """start() declares the events, delay and dead-letter exchanges, the tiers, and each flow's queues."""
    transport = await make(flows=["calls"])
    p = transport.names.prefix
    expected = [("exchange", f"{p}.events"), ("exchange", f"{p}.delay"), ("exchange", f"{p}.dlx")]
    expected += [("queue", f"{p}.flow.calls"), ("queue", f"{p}.dlq.calls")]
    expected += [
        ("queue", f"{p}.delay.{label}")
        for label in ("1s", "5s", "30s", "2m", "10m", "1h", "6h", "1d")
    ]
    assert [name for kind, name in expected if not await _exists(kind, name)] == []
    assert not await _exists("queue", f"{p}.flow.other")


async def test_publish_is_confirmed_and_queued(make: Make) -> None:
    """publish() returns once the broker holds the messages: persistent, id and headers set."""
    transport = await make()
    envs = [Envelope.new("orders", {"n": i}) for i in range(3)]
    assert (await transport.publish(envs)).accepted == [e.id for e in envs]
    assert await transport.backlog("orders") == 3
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        queue = await (await connection.channel()).get_queue(transport.names.flow("orders"))
        got = await queue.get(no_ack=False)
        assert got is not None
        assert (got.message_id, got.body) == (envs[0].id, envs[0].to_json())
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        headers = got.headers
        assert (headers[H_FLOW], headers[H_CURSOR], headers[H_ATTEMPT], headers[H_CORRELATION]) == (
            "orders",
            0,
            1,
            envs[0].id,
        )
        await got.reject(requeue=True)


@pytest.mark.parametrize("delay", [0.4, 2.2], ids=["below-smallest-tier", "two-tier-hops"])
async def test_delayed_retry_waits_its_delay(make: Make, delay: float) -> None:
    """A retry is not delivered before its delay has passed, and is delivered after it."""
    transport = await make()
    retried_at: list[float] = []

    async def act(d: Delivery) -> None:
        if d.envelope.attempt == 1:
            retried_at.append(time.time())
            await d.retry(d.envelope.evolve(attempt=2), delay)
        else:
            await complete(d)

    rec = Recorder(act)
    transport.consume("later", rec)
    await transport.publish([Envelope.new("later", {})])
    await rec.next()
    second = await rec.next()
    assert second.attempt == 2 and time.time() - retried_at[0] >= delay
    record = await transport.message(second.id)
    assert record is not None and record.state is MessageState.DELIVERED


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
async def test_delayed_publish_waits_its_delay(make: Make, quorum: bool) -> None:
    """publish(delay=...) parks the message in a tier; it arrives only after the delay."""
    transport = await make(quorum=quorum)
    rec = Recorder(complete)
    transport.consume("later", rec)
    start = time.time()
    await transport.publish([Envelope.new("later", {})], delay=1.3)
    await rec.next()
    assert time.time() - start >= 1.3


async def test_start_without_broker_raises(tmp_path: Path) -> None:
    """start() against an unreachable broker fails with TransportError naming the URL."""
    transport = RabbitTransport("amqp://guest:guest@127.0.0.1:1/", REDIS_URL, prefix="test-none")
    with pytest.raises(TransportError, match="127.0.0.1:1"):
        await transport.start()


async def test_two_consumers_process_each_message_once(make: Make) -> None:
    """Two workers on one flow: every message is handled exactly once between them."""
    first = await make()
    second = await make(prefix=first.names.prefix)
    handled: Counter[str] = Counter()
    done = asyncio.Event()
    envs = [Envelope.new("shared", {"i": i}) for i in range(60)]

    async def act(d: Delivery) -> None:
        handled[d.envelope.id] += 1
        await asyncio.sleep(0.005)
        await complete(d)
        if len(handled) == len(envs):
            done.set()

    first.consume("shared", act, concurrency=4)
    second.consume("shared", act, concurrency=4)
    await first.publish(envs)
    await asyncio.wait_for(done.wait(), 20)
    await asyncio.sleep(0.2)  # a duplicate would show up now
    assert set(handled) == {e.id for e in envs} and set(handled.values()) == {1}


async def test_worker_sigkill_resumes_after_checkpoint(make: Make) -> None:
    """A worker killed mid-message after a to: call: the next worker resumes past it, no repeat."""
    transport = await make(flows=["kill"])
    prefix = transport.names.prefix
    env = Envelope.new("kill", {"n": 1})
    await transport.publish([env])
    child = subprocess.Popen(
        [sys.executable, str(CHILD), AMQP_URL, REDIS_URL, prefix, "kill"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(_read_until, child, "checkpointed"), 20)
        assert line.split()[1] == env.id
    finally:
        child.kill()  # SIGKILL: no goodbye to the broker, the delivery is unacked
        child.wait()
    redis = Redis.from_url(REDIS_URL)

    async def act(d: Delivery) -> None:
        if d.envelope.cursor == 0:  # the to: call, done only when not done before
            await redis.incr(f"{prefix}:calls:{d.envelope.id}")
        await complete(d)

    rec = Recorder(act)
    transport.consume("kill", rec)
    try:
        got = await rec.next()
        assert (got.id, got.cursor, got.context) == (env.id, 1, {"ticket": {"id": 7}})
        assert int(await redis.get(f"{prefix}:calls:{env.id}")) == 1
    finally:
        await redis.aclose()


def _read_until(child: subprocess.Popen, prefix: str) -> str:
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"rabbit_child exited with {child.wait()} before printing {prefix!r}")


async def _ctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    assert await proc.wait() == 0, f"rabbitmqctl {' '.join(args)} failed"


async def test_broker_restart_loses_no_confirmed_publish(make: Make) -> None:
    """stop_app/start_app under load: every publish that returned is delivered (lost = 0)."""
    transport = await make(publish_timeout=0.5, reconnect_interval=0.5, flows=["restart"])
    accepted: list[str] = []
    refused = 0
    handled: set[str] = set()
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal refused
        while not stop.is_set():
            env = Envelope.new("restart", {})
            try:
                await transport.publish([env])
                accepted.append(env.id)
            except TransportError:  # what the ingress turns into 503
                refused += 1
                await asyncio.sleep(0.1)

    async def act(d: Delivery) -> None:
        await complete(d)
        handled.add(d.envelope.id)

    transport.consume("restart", act)
    publishers = [asyncio.create_task(publisher()) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        await _ctl("stop_app")
        await asyncio.sleep(0.5)
    finally:
        await _ctl("start_app")
        await _ctl("await_startup")
    await asyncio.sleep(2.0)  # publishing resumes on the restored connection
    stop.set()
    await asyncio.gather(*publishers)
    for _ in range(150):
        if set(accepted) <= handled:
            break
        await asyncio.sleep(0.1)
    assert refused > 0 and len(accepted) > 0, (refused, len(accepted))  # the outage was seen
    lost = set(accepted) - handled
    assert lost == set(), f"{len(lost)} of {len(accepted)} confirmed publishes never delivered"


async def test_redelivery_finishes_a_recorded_but_unsent_outbox(make: Make) -> None:
    """An ending recorded in Redis but not published (a crash between the two): the stale
    redelivery publishes the recorded child, marks it sent, and never runs the handler again."""
    transport = await make(flows=["parent", "child"])
    parent = Envelope.new("parent", {"n": 1})
    await transport.publish([parent])
    child = parent.derive("child", {"n": 2}, event="made")
    now = time.time()
    stored = await transport.ledger.peek(parent.id)
    assert stored is not None and stored.envelope == parent.to_json()
    outbox = [out("flow", child, 0.0, 0)]
    await transport.ledger.update(  # what RabbitDelivery._end records before it publishes
        parent, now, stored.created_at, state=MessageState.DELIVERED, gen=1,
        outbox=[i.to_dict() for i in outbox], children=[(child, now)],
    )
    ran: list[str] = []

    async def parent_handler(d: Delivery) -> None:
        ran.append(d.envelope.id)
        await complete(d)

    rec = Recorder(complete)
    transport.consume("parent", parent_handler)
    transport.consume("child", rec)
    got = await rec.next()
    assert (got.id, got.body) == (child.id, {"n": 2})
    # the child can reach its consumer before the broker confirms it to the parent's flush
    for _ in range(100):
        after = await transport.ledger.peek(parent.id)
        assert after is not None
        if after.sent == 1:
            break
        await asyncio.sleep(0.05)
    assert (after.gen, after.sent, after.outbox) == (1, 1, [])
    assert ran == []


async def test_concurrent_publishes_are_each_confirmed_and_recorded(make: Make) -> None:
    """Publishes issued together (they share Redis pipelines and broker writes) each come back
    accepted only once queued, each with its own record and 'received' line."""
    transport = await make(flows=["many"])
    envs = [Envelope.new("many", {"i": i}) for i in range(50)]
    results = await asyncio.gather(*(transport.publish([e]) for e in envs))
    assert [r.accepted for r in results] == [[e.id] for e in envs]
    assert await transport.backlog("many") == len(envs)
    records = [await transport.message(e.id) for e in envs]
    assert [r.envelope for r in records if r] == envs
    assert all([[x.kind for x in await transport.history(e.id)] == ["received"] for e in envs])
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        queue = await (await connection.channel()).get_queue(transport.names.flow("many"))
        got = [await queue.get(no_ack=False) for _ in envs]
        assert sorted(m.message_id for m in got if m) == sorted(e.id for e in envs)
        for m in got:
            assert m is not None
            await m.reject(requeue=True)


async def test_body_larger_than_a_frame_arrives_whole(make: Make) -> None:
    """A message bigger than the negotiated frame size is split into body frames and joined
    again: the consumer gets the envelope exactly as published."""
    transport = await make()
    rec = Recorder(complete)
    transport.consume("big", rec)
    env = Envelope.new("big", {"blob": "x" * 300_000, "n": [1, 2, 3]})
    await transport.publish([env])
    got = await rec.next()
    assert (got.id, got.body) == (env.id, env.body)


async def test_refused_publish_undoes_the_claim_and_records(make: Make) -> None:
    """A publish the broker refuses (a bound queue full, reject-publish) is a TransportError, and
    leaves neither a record nor the dedupe claim: the vendor's retry is taken, not a duplicate."""
    transport = await make(flows=["full"])
    p = transport.names.prefix
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            f"{p}.test-full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(f"{p}.events", routing_key="full")
        try:
            env = Envelope.new("full", {"n": 1})
            with pytest.raises(TransportError, match="refused"):
                await transport.publish([env], dedupe_key="vendor:evt-1")
            assert await transport.message(env.id) is None
        finally:
            await full.delete(if_unused=False, if_empty=False)
    retry = Envelope.new("full", {"n": 1})
    result = await transport.publish([retry], dedupe_key="vendor:evt-1")
    assert (result.accepted, result.duplicate_of) == ([retry.id], None)


async def test_dedupe_holds_across_processes_sharing_a_prefix(make: Make) -> None:
    """Two transports on one prefix (two serve processes): one publish per dedupe key wins; the
    other answers duplicate_of with the winner's ids, and only the winner is queued."""
    first = await make(flows=["hooks"])
    second = await make(prefix=first.names.prefix, flows=["hooks"])
    a, b = Envelope.new("hooks", {"from": "a"}), Envelope.new("hooks", {"from": "b"})
    ra, rb = await asyncio.gather(
        first.publish([a], dedupe_key="vendor:evt-7"), second.publish([b], dedupe_key="vendor:evt-7")
    )
    winner, loser = (ra, rb) if ra.accepted else (rb, ra)
    assert len(winner.accepted) == 1 and (loser.accepted, loser.duplicate_of) == ([], winner.accepted)
    assert await first.backlog("hooks") == 1
    lost = b.id if winner is ra else a.id
    assert await first.message(lost) is None
    assert [e.kind for e in await first.history(winner.accepted[0])] == ["received", "duplicate"]


async def test_backlog_counts_what_is_queued_now(make: Make) -> None:
    """backlog() asks the broker every time: it follows publishes, not its first answer (which
    aio-pika's robust channel would otherwise repeat), so the backlog bound can trip."""
    transport = await make(flows=["count"])
    assert await transport.backlog("count") == 0
    await transport.publish([Envelope.new("count", {})])
    assert await transport.backlog("count") == 1
    await transport.publish([Envelope.new("count", {}), Envelope.new("count", {})])
    assert (await transport.backlog("count"), await transport.backlog()) == (3, 3)


async def test_a_consumer_the_broker_cancels_consumes_again(make: Make) -> None:
    """The flow's queue deleted and declared again (what a moved queue looks like to a consumer):
    the broker cancels the consumer, which registers again and takes the next message."""
    transport = await make(flows=["moved"])
    rec = Recorder(complete)
    transport.consume("moved", rec)
    first = Envelope.new("moved", {"n": 1})
    await transport.publish([first])
    assert (await rec.next()).id == first.id
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(transport.names.flow("moved"))
    again = await make(prefix=transport.names.prefix)  # declares the flow's queue afresh
    await again.ensure_flow("moved")
    second = Envelope.new("moved", {"n": 2})
    await again.publish([second])
    assert (await rec.next()).id == second.id


async def test_next_deliveries_are_admitted_while_the_slots_are_full(make: Make) -> None:
    """concurrency bounds the handlers; the prefetch beyond it lets the next deliveries read
    their records meanwhile, so they start without a Redis round trip of their own."""
    transport = await make(flows=["ahead"])
    peeked: list[str] = []
    real_peek = transport.ledger.peek

    async def peek(message_id: str) -> Any:
        peeked.append(message_id)
        return await real_peek(message_id)

    transport.ledger.peek = peek  # type: ignore[method-assign]
    running, most, release = 0, 0, asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        await complete(delivery)

    rec = Recorder(hold)
    envs = [Envelope.new("ahead", {"n": i}) for i in range(6)]
    await transport.publish(envs)
    transport.consume("ahead", rec, concurrency=2)
    deadline = time.monotonic() + 10
    while (len(peeked) < 4 or running < 2) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # time for a third handler to start, were the slots not holding
    assert (running, len(peeked), await transport.backlog("ahead")) == (2, 4, 2)
    release.set()
    done = await rec.take(6)
    assert sorted(e.id for e in done) == sorted(e.id for e in envs)
    assert most == 2


async def test_close_returns_deliveries_admitted_but_not_started(make: Make) -> None:
    """A delivery read ahead but still waiting for a slot when close() begins is not started:
    it goes back to the queue for the next worker, so shutdown waits only for running ones."""
    transport = await make(flows=["closing"])
    started, release = [], asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        started.append(delivery.envelope.id)
        await release.wait()
        await complete(delivery)

    await transport.publish([Envelope.new("closing", {"n": i}) for i in range(3)])
    transport.consume("closing", Recorder(hold), concurrency=1)
    deadline = time.monotonic() + 10
    while (not started or await transport.backlog("closing") > 1) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert await transport.backlog("closing") == 1  # 1 running, 1 admitted and waiting
    closing = asyncio.create_task(transport.close(timeout=5.0))
    await asyncio.sleep(0.2)
    release.set()
    await closing
    assert len(started) == 1
    after = await make(prefix=transport.names.prefix, flows=["closing"])
    assert await after.backlog("closing") == 2


async def _strand(transport: RabbitTransport, env: Envelope, dedupe_key: str) -> None:
    """What a SIGKILL between the Redis write and the broker's confirm leaves: the record and
    the dedupe key in Redis, nothing in the broker, no undo."""
    real = transport.publisher.send_many

    async def never(*_: Any, **__: Any) -> None:
        await asyncio.Event().wait()

    transport.publisher.send_many = never  # type: ignore[method-assign]
    publishing = asyncio.create_task(transport.publish([env], dedupe_key=dedupe_key))
    while await transport.message(env.id) is None:
        await asyncio.sleep(0.01)
    publishing.cancel()
    await asyncio.gather(publishing, return_exceptions=True)
    transport.publisher.send_many = real  # type: ignore[method-assign]


async def test_publish_stranded_before_its_confirm_is_republished(make: Make) -> None:
    """A repeat of a publish whose first copy is recorded but unconfirmed is refused (503) while
    that copy may still be on its way; once stale, the first copy is republished from its record,
    runs once, and repeats are duplicates of it."""
    transport = await make(flows=["stranded"], publish_timeout=0.5)
    first = Envelope.new("stranded", {"n": 1})
    await _strand(transport, first, "vendor:evt-s")
    assert await transport.backlog("stranded") == 0  # the broker never got it
    with pytest.raises(TransportError, match="still being published"):
        await transport.publish([Envelope.new("stranded", {"n": 1})], dedupe_key="vendor:evt-s")
    rec = Recorder(complete)
    transport.consume("stranded", rec)
    assert (await rec.next()).id == first.id
    repeat = await transport.publish([Envelope.new("stranded", {"n": 1})], dedupe_key="vendor:evt-s")
    assert (repeat.accepted, repeat.duplicate_of) == ([], [first.id])
    kinds = [e.kind for e in await transport.history(first.id)]
    assert kinds == ["received", "republished", "delivered", "duplicate"], kinds
    assert (await transport.message(first.id)).state is MessageState.DELIVERED  # type: ignore[union-attr]
    await asyncio.sleep(transport.stale_after + 0.5)  # no second copy comes later
    assert rec.seen.empty() and await transport.ledger.unconfirmed([first.id]) == [None]


async def test_stale_repeat_republishes_a_stranded_first_copy(make: Make) -> None:
    """A repeat that finds its first copy stranded past the stale time republishes it itself and
    is answered duplicate: no sweeper round is needed (here none runs: its period is 10 s)."""
    transport = await make(flows=["stranded"], publish_timeout=20.0)
    first = Envelope.new("stranded", {"n": 1})
    await _strand(transport, first, "vendor:evt-t")
    transport.clock = lambda: time.time() + transport.stale_after  # type: ignore[method-assign]
    repeat = await transport.publish([Envelope.new("stranded", {"n": 2})], dedupe_key="vendor:evt-t")
    assert repeat.duplicate_of == [first.id]
    assert await transport.backlog("stranded") == 1


async def test_confirmed_publishes_are_never_republished(make: Make) -> None:
    """The sweeper leaves confirmed publishes alone, and a stale mark on a message that already
    ran (the confirm's mark lost to a crash) is cleared without queueing a copy."""
    transport = await make(flows=["swept"], publish_timeout=0.5)
    rec = Recorder(complete)
    transport.consume("swept", rec)
    env = Envelope.new("swept", {"n": 1})
    await transport.publish([env], dedupe_key="vendor:evt-u")
    assert (await rec.next()).id == env.id
    assert await transport.ledger.unconfirmed([env.id]) == [None]
    redis = Redis.from_url(REDIS_URL)
    try:  # the mark a crash between the confirm and its ZREM leaves
        await redis.zadd(f"{transport.names.prefix}:unconfirmed", {env.id: time.time() - 60})
    finally:
        await redis.aclose()
    await asyncio.sleep(transport.stale_after)
    assert await transport.ledger.unconfirmed([env.id]) == [None]
    assert rec.seen.empty() and await transport.backlog("swept") == 0
    assert "republished" not in [e.kind for e in await transport.history(env.id)]


async def test_sent_mark_of_an_older_generation_keeps_the_newer_outbox(make: Make) -> None:
    """A worker's sent mark for generation 1 that lands after another worker recorded generation
    2 (it ran the retry copy at once) must not clear generation 2's outbox: a crash of that
    worker would leave its retry copy unpublished."""
    transport = await make(flows=["marks"])
    env = Envelope.new("marks", {"n": 1})
    await transport.publish([env])
    stored = await transport.ledger.get(env.id)
    assert stored is not None
    pending = [out("flow", env, 0.0, 2).to_dict()]
    await transport.ledger.update(env, time.time(), stored.created_at, gen=2, outbox=pending)
    await transport.ledger.sent(env.id, 1)
    after = await transport.ledger.get(env.id)
    assert after is not None and (after.gen, after.sent, len(after.outbox)) == (2, 0, 1)
    await transport.ledger.sent(env.id, 2)
    after = await transport.ledger.get(env.id)
    assert after is not None and (after.gen, after.sent, after.outbox) == (2, 2, [])


async def test_prune_trims_the_fixed_indexes_and_correlations_expire(make: Make) -> None:
    """prune() trims the receipt, flow and state indexes without walking the keyspace; each
    correlation's index carries the ledger TTL instead (there is one per conversation)."""
    transport = await make(flows=["pruned"])
    root = Envelope.new("pruned", {"n": 0})
    env = Envelope.new("pruned", {"n": 1}, {"correlation_id": root.id})
    await transport.publish([root, env])
    p = transport.names.prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        ttl = await redis.ttl(f"{p}:idx:corr:{root.id}")
        assert 0 < ttl <= transport.ledger.ttl
        assert await redis.zrange(f"{p}:idx:corr:{root.id}", 0, -1) == [env.id.encode()]
        indexes = [f"{p}:idx:all", f"{p}:idx:flow:pruned", f"{p}:idx:state:queued"]
        assert None not in [await redis.zscore(k, env.id) for k in indexes]
        await transport.ledger.prune(time.time() + 1, ["pruned"])
        assert [await redis.zscore(k, env.id) for k in indexes] == [None] * 3
    finally:
        await redis.aclose()


async def test_an_ending_with_nothing_to_publish_is_recorded_sent_without_a_mark(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery that ends with nothing to publish (a sink's last step) records its generation
    as sent in the ending's own transaction, clearing a stale outbox of an earlier generation,
    and sends no separate sent mark; an ending that publishes still does."""
    transport = await make(flows=["quiet", "loud", "next"])
    marks: list[tuple[str, int]] = []
    mark = transport.ledger.sent
    monkeypatch.setattr(
        transport.ledger, "sent", lambda mid, gen: marks.append((mid, gen)) or mark(mid, gen)
    )
    quiet, loud = Envelope.new("quiet", {"n": 1}), Envelope.new("loud", {"n": 2})
    await transport.publish([quiet, loud])
    stored = await transport.ledger.peek(quiet.id)
    assert stored is not None
    stale = [out("flow", quiet, 0.0, 0).to_dict()]  # generation 0's, its mark lost
    await transport.ledger.update(quiet, time.time(), stored.created_at, gen=0, outbox=stale)
    rec = Recorder(complete)

    async def emits(d: Delivery) -> None:
        child = d.envelope.derive("next", {"n": 3}, event="made")
        await d.complete(MessageState.DELIVERED, d.envelope, emit=[(child, 0.0)])

    child = Recorder(complete)
    transport.consume("quiet", rec)
    transport.consume("loud", emits)
    transport.consume("next", child)
    assert (await rec.next()).id == quiet.id  # recorded once its ending (update, ack) returned
    after = await transport.ledger.peek(quiet.id)
    assert after is not None and after.state is MessageState.DELIVERED
    assert (after.gen, after.sent, after.outbox) == (1, 1, [])
    assert (await child.next()).body == {"n": 3}
    for _ in range(100):
        if marks:
            break
        await asyncio.sleep(0.05)
    assert marks == [(loud.id, 1)]


async def test_the_slot_is_given_back_before_the_outbox_is_confirmed(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """concurrency bounds the handlers, not the broker's confirm of what they publish: with one
    slot, the next delivery runs while the first one's child still waits for its confirm, and
    each delivery is acked only once its own outbox is confirmed."""
    transport = await make(flows=["one", "next"])
    confirm = asyncio.Event()
    real_send = transport.publisher.send
    waiting: list[str] = []

    async def held_send(env: Envelope, **kw: Any) -> None:
        waiting.append(env.id)
        await confirm.wait()
        await real_send(env, **kw)

    acked: list[str | None] = []
    real_ack = transport.ack

    async def ack(message: Any) -> None:
        await real_ack(message)
        acked.append(message.message_id)

    monkeypatch.setattr(transport, "ack", ack)
    handled: list[str] = []

    async def emits(d: Delivery) -> None:
        handled.append(d.envelope.id)
        child = d.envelope.derive("next", {"from": d.envelope.id}, event="made")
        await d.complete(MessageState.DELIVERED, d.envelope, emit=[(child, 0.0)])

    first, second = Envelope.new("one", {"n": 1}), Envelope.new("one", {"n": 2})
    await transport.publish([first, second])
    monkeypatch.setattr(transport.publisher, "send", held_send)
    transport.consume("one", emits, concurrency=1)
    deadline = time.monotonic() + 5
    try:
        while len(waiting) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sorted(handled) == sorted([first.id, second.id])
        assert len(waiting) == 2  # both children wait for their confirm
        await asyncio.sleep(0.1)
        assert acked == []  # and neither parent is acked before it
    finally:
        confirm.set()
    children = Recorder(complete)
    transport.consume("next", children)
    assert sorted(e.body["from"] for e in await children.take(2)) == sorted(handled)
    parents = lambda: sorted(a for a in acked if a in handled)  # noqa: E731 - children ack too
    while len(parents()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert parents() == sorted(handled)
