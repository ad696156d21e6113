"""The distributed transport: RabbitMQ (aio-pika) carries the messages, Redis keeps the state.

RabbitMQ: one durable queue per flow, publisher confirms, manual acks, delays through TTL tier
queues, dead letters archived in per-flow DLQs (names in docs/rabbitmq.md). Redis: the ledger,
message records and checkpoints, the dead-letter index and inbound dedupe keys
(``rabbitmq_ledger``). Any number of worker processes may share one prefix.

``publish`` order: (1) one atomic Redis call claims the dedupe key and, only if that wins, writes
the records and 'received' lines (a consumer always finds its record); (2) the confirmed publish;
(3) return (the ingress answers 202), the confirm marked in Redis on the way. If (2) fails, (1)
is undone and the caller gets TransportError (503). A process that dies between (1) and (2)
leaves a record the broker never got: ``rabbitmq_stranded`` republishes it. Concurrent publishes
share Redis pipelines and broker writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import BlockingConnectionPool, Redis

from bus.envelope import Envelope
from bus.errors import TransportError
from bus.shared.redis_store import RedisDedupeStore
from bus.transport import rabbitmq_topology as topo
from bus.transport.base import (
    DeadLetter,
    Handler,
    LedgerEntry,
    MessageRecord,
    MessageState,
    PublishResult,
    Transport,
)
from bus.transport.entries import duplicate_entry, received_entry
from bus.transport.rabbitmq_backlog import Backlog
from bus.transport.rabbitmq_consumer import deliver
from bus.transport.rabbitmq_delivery import flush, out
from bus.transport.rabbitmq_inbound import Inbound, InboundConsumer
from bus.transport.rabbitmq_ledger import RedisLedger, delete_prefix, warn_if_records_unpacked
from bus.transport.rabbitmq_publisher import OUTAGE, Publisher
from bus.transport.rabbitmq_stranded import check_first_copy, sweep_forever

log = structlog.get_logger()

PRUNE_EVERY = 60.0


class RabbitTransport(Transport):
    """Queues per flow in RabbitMQ; ledger, checkpoints, dead-letter index and dedupe in Redis."""

    def __init__(
        self,
        amqp_url: str,
        redis_url: str,
        *,
        prefix: str = "tieline",
        flows: Iterable[str] = (),
        backlog_limit: int = 100_000,
        dedupe_window: float = 7 * 86400,
        prefetch: int = 32,
        quorum: bool = False,
        clock: Callable[[], float] = time.time,
        ledger_ttl: float | None = None,
        publish_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ):
        self.amqp_url, self.redis_url = amqp_url, redis_url
        self.names = topo.Names(prefix)
        self.clock = clock
        self._flows = list(flows)
        self._dedupe_window = dedupe_window
        self._prefetch = prefetch
        self._quorum = quorum
        self._ledger_ttl = ledger_ttl or max(dedupe_window, 86400)
        self._publish_timeout = publish_timeout
        # an unconfirmed publish older than this was stranded: a live one gives up sooner
        self.stale_after = 2 * publish_timeout + 1.0
        self._reconnect_interval = reconnect_interval
        self._consumers: dict[str, tuple[Handler, int]] = {}
        self._consuming: list[InboundConsumer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()
        self._backlog = Backlog(backlog_limit, self.backlog, prefix)
        self._pruned_at = float("-inf")
        self._state = "new"

    # ----- life -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state != "new":
            raise TransportError(f"rabbitmq transport {self.names.prefix}: start() called twice")
        # a blocking pool: a burst of publishers waits for a connection instead of failing
        self.redis = Redis(
            connection_pool=BlockingConnectionPool.from_url(
                self.redis_url, max_connections=64, timeout=10
            )
        )
        try:
            await self.redis.ping()
            self.connection: AbstractRobustConnection = await aio_pika.connect_robust(
                self.amqp_url, reconnect_interval=self._reconnect_interval
            )
        except (OSError, *OUTAGE) as exc:
            await self.redis.aclose()
            raise TransportError(
                f"rabbitmq transport: cannot reach the broker ({self.amqp_url}) or Redis "
                f"({self.redis_url}): {exc}; start them or fix the URLs"
            ) from exc
        self.ledger = RedisLedger(self.redis, self.names.prefix, self._ledger_ttl)
        await self.ledger.load_scripts()
        await warn_if_records_unpacked(self.redis)
        self.dedupe = RedisDedupeStore(self.redis, self.names.prefix)
        self._channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._info = await self.connection.channel(publisher_confirms=False)
        self._ex = await topo.declare_base(self._channel, self.names, self._quorum)
        self.publisher = Publisher(
            self._ex.events,
            self._ex.delay,
            self._ex.dlx,
            give_up_after=self._publish_timeout,
            clock=self.clock,
        )
        for flow in self._flows:
            await self.ensure_flow(flow)
        self._state = "running"
        for flow in self._consumers:
            self._spawn(self._start_consumer(flow))
        self._spawn(sweep_forever(self, every=max(self._publish_timeout / 2, 0.1)))

    async def close(self, timeout: float = 10.0) -> None:
        if self._state != "running":
            return
        self._state = "closing"
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in self._consuming:  # no new deliveries; in-flight ones may still ack
            try:
                await asyncio.wait_for(consumer.cancel(), 2.0)
            except OUTAGE as exc:
                log.warning("transport.cancel_failed", queue=consumer.queue, error=repr(exc))
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            for task in pending:  # unacked: RabbitMQ hands them to another worker
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.connection.close()
        marks = self.ledger.flush_confirmed()
        if marks is not None:  # out before the batch closes (failures are logged)
            await asyncio.wait([marks], timeout=2.0)
        await self.ledger.batch.aclose()
        await self.redis.aclose()
        self._state = "closed"

    async def drop(self) -> None:
        """Delete this prefix's exchanges, queues (declared flows) and Redis keys; after close().

        For tests and benchmarks: it destroys messages, never call it on a live bus.
        """
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            await topo.delete_all(channel, self.names, sorted(self._declared))
        await delete_prefix(self.redis_url, self.names.prefix)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def closing(self) -> bool:
        """close() has begun: deliveries still waiting for a handler slot go back unstarted."""
        return self._state != "running"

    @property
    def declared(self) -> frozenset[str]:
        """Flows whose queues this transport declared (configured, published to or consumed)."""
        return frozenset(self._declared)

    async def ensure_flow(self, flow: str) -> None:
        """Declare ``flow``'s queue and DLQ once per process (before publishing to it)."""
        if flow in self._declared:
            return
        async with self._declare_lock:
            if flow not in self._declared:
                await topo.declare_flow(self._channel, self.names, self._ex, flow, self._quorum)
                self._declared.add(flow)

    async def ack(self, message: Inbound) -> None:
        """Ack, tolerating a dead channel: the redelivery is then dropped by ``admit``."""
        try:
            await message.ack()
        except OUTAGE as exc:
            log.warning("transport.ack_lost", message_id=message.message_id, error=repr(exc))

    # ----- producing --------------------------------------------------------------------
    async def publish(
        self,
        envelopes: Sequence[Envelope],
        *,
        dedupe_key: str | None = None,
        delay: float = 0.0,
        entries: Sequence[LedgerEntry] = (),
    ) -> PublishResult:
        envs = list(envelopes)
        await self._backlog.check(len(envs))
        now, ids = self.clock(), [e.id for e in envs]
        try:
            for flow in {e.flow for e in envs}:
                await self.ensure_flow(flow)
        except OUTAGE as exc:
            raise TransportError(
                f"rabbitmq transport: publish failed: {exc!r}; retry later"
            ) from exc
        due = now + delay if delay > 0 else 0.0
        bodies = [e.to_json() for e in envs]
        claim = (
            None
            if dedupe_key is None
            else self.dedupe.claim_args(dedupe_key, ids, self._dedupe_window)
        )
        held = await self.ledger.received(  # one Lua call, in a pipeline shared with other callers
            [(e, due or now) for e in envs],
            [*(received_entry(e, now, delay) for e in envs), *entries],
            now,
            bodies=bodies,
            claim=claim,
        )
        if held is not None:
            first = orjson.loads(held)
            await check_first_copy(self, dedupe_key or "", first)
            await self.ledger.log([duplicate_entry(dedupe_key, first, ids, now)])
            return PublishResult(accepted=[], duplicate_of=first)
        try:
            self._backlog.published += len(envs)
            await self.publisher.send_many(
                [(e, due, body) for e, body in zip(envs, bodies, strict=True)]
            )
        except (TransportError, *OUTAGE) as exc:
            await self.ledger.forget(ids)
            if dedupe_key is not None:
                await self.dedupe.release(dedupe_key, ids)
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"rabbitmq transport: publish failed: {exc!r}; retry later"
            ) from exc
        self.ledger.confirmed(ids)
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self._spawn(self.ledger.prune(now - self._ledger_ttl, sorted(self._declared)))
        return PublishResult(accepted=ids)

    # ----- consuming --------------------------------------------------------------------
    def consume(self, flow: str, handler: Handler, *, concurrency: int = 16) -> None:
        if flow in self._consumers:
            raise TransportError(
                f"rabbitmq transport: flow {flow!r} already has a consumer; call consume() once per flow"
            )
        if concurrency < 1:
            raise ValueError(f"consume({flow!r}): concurrency must be >= 1, got {concurrency}")
        self._consumers[flow] = (handler, concurrency)
        if self._state == "running":
            self._spawn(self._start_consumer(flow))

    async def _start_consumer(self, flow: str) -> None:
        """A channel per flow. ``concurrency`` slots bound the handlers; the prefetch (up to
        twice that, at most ``prefetch``) lets the next deliveries be admitted meanwhile."""
        handler, concurrency = self._consumers[flow]
        await self.ensure_flow(flow)
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=max(1, min(self._prefetch, 2 * concurrency)))
        queue = await channel.declare_queue(self.names.flow(flow), passive=True)
        slots = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        def on_message(message: Inbound) -> None:
            # our own task: aiormq cancels its callback tasks when the channel closes
            task = loop.create_task(deliver(self, handler, message, slots))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        consumer = InboundConsumer(channel, queue.name, on_message)
        await consumer.start()
        self._consuming.append(consumer)

    # ----- ledger -----------------------------------------------------------------------
    async def message(self, message_id: str) -> MessageRecord | None:
        stored = await self.ledger.get(message_id)
        return stored.record if stored else None

    async def history(self, message_id: str) -> list[LedgerEntry]:
        return await self.ledger.history(message_id)

    async def search(
        self,
        *,
        flow: str | None = None,
        state: MessageState | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[MessageRecord]:
        return await self.ledger.search(
            flow=flow,
            state=state,
            correlation_id=correlation_id,
            since=since,
            until=until,
            limit=limit,
        )

    # ----- dead letters -----------------------------------------------------------------
    async def dead_letters(self, *, flow: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self.ledger.dead_letters(flow, limit)

    async def dead_letter(self, message_id: str) -> DeadLetter | None:
        return await self.ledger.dead_letter(message_id)

    async def dead_letter_summary(self, flow: str) -> tuple[int, float | None]:
        return await self.ledger.dead_summary(flow)

    async def replay(self, message_id: str, envelope: Envelope | None = None) -> bool:
        if envelope is not None and envelope.id != message_id:
            raise ValueError(
                f"replay({message_id!r}): the envelope has id {envelope.id!r}; "
                "derive it from the dead letter with evolve() so the id stays"
            )
        letter = await self.ledger.dead_letter(message_id)
        if letter is None or not await self.ledger.claim_dead(message_id):
            return False
        stored = await self.ledger.get(message_id)
        assert stored is not None  # dead_letter() just read it; keys outlive a replay call
        again = envelope if envelope is not None else letter.envelope.evolve(attempt=1)
        now = self.clock()
        gen = stored.gen + 1
        outbox = [out("flow", again, 0.0, gen)]
        entry = LedgerEntry(
            message_id,
            "replayed",
            now,
            flow=again.flow,
            attempt=again.attempt,
            detail={"cursor": again.cursor},
        )
        try:
            await self.ledger.update(
                again,
                now,
                stored.created_at,
                [entry],
                state=MessageState.QUEUED,
                gen=gen,
                available_at=now,
                outbox=[i.to_dict() for i in outbox],
            )
        except BaseException:
            await self.ledger.unclaim_dead(message_id, letter.dead_at)
            raise
        await self.ledger.undead(message_id, letter.flow)
        await flush(self, message_id, gen, outbox)
        return True

    async def purge(self, message_ids: Sequence[str]) -> int:
        count = 0
        for mid in dict.fromkeys(message_ids):
            stored = await self.ledger.get(mid)
            if stored is None or stored.record.state is not MessageState.DEAD:
                continue
            if not await self.ledger.claim_dead(mid):
                continue
            now = self.clock()
            await self.ledger.update(
                stored.record.envelope,
                now,
                stored.created_at,
                [LedgerEntry(mid, "purged", now, flow=stored.flow)],
                state=MessageState.PURGED,
            )
            await self.ledger.undead(mid, stored.flow)
            count += 1
        return count

    # ----- state ------------------------------------------------------------------------
    async def backlog(self, flow: str | None = None) -> int:
        """Ready messages in the flow queues (passive declare), plus, for all flows, the
        messages parked in delay tiers. Messages in a handler right now are not counted."""
        if flow is not None:
            names = [self.names.flow(flow)]
        else:
            names = [
                *(self.names.flow(f) for f in sorted(self._declared)),
                *self.names.tier_queues(),
            ]
        try:
            if flow is not None:  # a passive declare of a missing queue kills the channel
                await self.ensure_flow(flow)
            return await topo.count(self._info, names)
        except OUTAGE as exc:
            raise TransportError(
                f"rabbitmq transport: cannot count queue backlog: {exc!r}"
            ) from exc
