"""The RabbitMQ transport's ledger, message records and dead-letter index, in Redis: their keys and
writes (the reads are in ``rabbitmq_reads``).

Keys (``p`` = prefix), each message's keys expire ``ttl`` seconds after its last write:

    p:msg:{id}          hash: envelope (latest, incl. checkpoints), state, gen, sent, outbox,
                        times, error, dead info
    p:ledger:{id}       list of LedgerEntry JSON (``line``: no id, no default fields), in
                        write order
    p:idx:all / p:idx:flow:{flow} / p:idx:state:{state} / p:idx:corr:{cid}
                        sorted sets of ids by first receipt, for search (pruned past ttl; a
                        correlation's index expires ttl after its last message instead, and
                        holds only the messages other than its root, the id it is named by:
                        a key per root message would be 7 % of each message's memory)
    p:dlq:all / p:dlq:flow:{flow}
                        sorted sets of dead-letter ids by dead_at
    p:unconfirmed       sorted set of ids received at ingress whose broker confirm has not been
                        recorded yet, by receipt (``rabbitmq_stranded`` republishes old ones)

Each write is one atomic transaction (``redis_batch.Tx``: MULTI/EXEC, or a Lua call for a
dedupe claim), so a reader never sees a state without its ledger lines; the writes and record
reads of concurrent deliveries share pipelines (``RedisBatch``, group commit) instead of paying
a round trip each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bus.envelope import Envelope
from bus.transport.base import LedgerEntry, MessageState
from bus.transport.rabbitmq_reads import LedgerReads
from bus.transport.redis_batch import RedisBatch, Tx

log = structlog.get_logger()

_STATES = [s.value for s in MessageState]

# ARGV: key, gen. Generation ``gen``'s outbox is published: mark it sent, unless a later ending
# (another worker ran the retry copy already) has recorded a newer generation and its outbox.
MARK_SENT = """
if redis.call('HGET', ARGV[1], 'gen') == ARGV[2] then
  redis.call('HSET', ARGV[1], 'sent', ARGV[2])
  redis.call('HDEL', ARGV[1], 'outbox')
end
return 1
"""

CONFIRM_FLUSH = 0.05  # seconds confirm marks gather before their one ZREM

# ARGV: key, cutoff, now, limit. Up to ``limit`` ids unconfirmed since before ``cutoff``, each
# re-scored ``now``: the caller holds them for one more stale period (a sweeper that dies before
# it is done leaves them to the next one, never to nobody).
TAKE_STRANDED = """
local ids = redis.call('ZRANGEBYSCORE', ARGV[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(ids) do redis.call('ZADD', ARGV[1], ARGV[3], id) end
return ids
"""


def line(e: LedgerEntry) -> bytes:
    """A ledger line as stored: without the message id (the key holds it) and without the
    fields at their default, which would be over half of a usual line's bytes in Redis."""
    d: dict[str, object] = {"kind": e.kind, "at": e.at}
    if e.flow:
        d["flow"] = e.flow
    if e.step is not None:  # written out, not a loop of getattr: a line per step per message
        d["step"] = e.step
    if e.attempt is not None:
        d["attempt"] = e.attempt
    if e.outcome is not None:
        d["outcome"] = e.outcome
    if e.error is not None:
        d["error"] = e.error
    if e.detail:
        d["detail"] = e.detail
    return orjson.dumps(d)


def _log_failure(fut: asyncio.Future[object]) -> None:
    """For marks not waited for: a failure is logged (what it costs is in each caller's doc)."""
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("transport.mark_failed", error=repr(fut.exception()))


async def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (tests, benchmarks: never on a live bus)."""
    redis = Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        for at in range(0, len(keys), 1000):
            await redis.delete(*keys[at : at + 1000])
    finally:
        await redis.aclose()


PACKED_VALUE_BYTES = 4096  # the hash-max-listpack-value docs/rabbitmq.md ("Sizing Redis") advises


async def warn_if_records_unpacked(redis: Redis) -> None:
    """Log once at start when Redis would store a usual message record as a hash table.

    A hash holding a value longer than ``hash-max-listpack-value`` (64 bytes by default; an
    envelope is hundreds) leaves the compact listpack encoding: ~490 bytes more per retained
    message, a quarter of its memory (bench/retention_size.py). The setting is the server's,
    so it is only named here; a Redis that refuses CONFIG (managed services) is not asked."""
    try:
        got = await redis.config_get("hash-max-listpack-value")
        value = int(got.get("hash-max-listpack-value", PACKED_VALUE_BYTES))
    except (ResponseError, ValueError):
        return
    if value < 1024:
        log.warning(
            "transport.redis_records_unpacked",
            hash_max_listpack_value=value,
            advice=f"CONFIG SET hash-max-listpack-value {PACKED_VALUE_BYTES} (and in redis.conf) "
            "stores each message record about a quarter smaller; see docs/rabbitmq.md, Sizing Redis",
        )


class RedisLedger(LedgerReads):
    """The writes (and the marks not waited for); the reads are ``LedgerReads``."""

    def __init__(self, redis: Redis, prefix: str, ttl: float):
        self.r = redis
        self.batch = RedisBatch(redis)
        self.p = prefix
        self.ttl = int(ttl)
        # Words as text: hiredis packs a float or an int at ~0.7 µs more than a str (measured).
        self._ttl_word = str(self.ttl)
        self._confirmed: list[str] = []
        self._confirm_timer: asyncio.TimerHandle | None = None
        # per state: its index key, and the other states' (a message sits in exactly one)
        self._state_idx = {
            s: (self._k("idx", "state", s), [self._k("idx", "state", o) for o in _STATES if o != s])
            for s in _STATES
        }

    async def load_scripts(self) -> None:
        """Cache the scripts sent without waiting (``script_soon``) so they keep their order."""
        await self.r.script_load(MARK_SENT)

    def _k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def _log(self, tx: Tx, entries: Iterable[LedgerEntry]) -> None:
        by_id: dict[str, list[bytes]] = {}
        for e in entries:
            by_id.setdefault(e.message_id, []).append(line(e))
        for mid, lines in by_id.items():
            key = f"{self.p}:ledger:{mid}"
            tx.add("RPUSH", key, *lines)
            tx.add("EXPIRE", key, self._ttl_word)

    def _index_state(
        self, tx: Tx, mid: str, state: str, created_at: str, was: Sequence[str] | None = None
    ) -> None:
        """Move ``mid`` to ``state``'s index, out of ``was`` (the states it may be in; default:
        every other one)."""
        key, others = self._state_idx[state]
        for other in others if was is None else (self._state_idx[w][0] for w in was):
            tx.add("ZREM", other, mid)
        tx.add("ZADD", key, created_at, mid)

    # ----- writes -------------------------------------------------------------------------
    def _received(
        self,
        tx: Tx,
        items: Iterable[tuple[Envelope, float]],
        now: float,
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        stamp = repr(now)
        for at, (env, available_at) in enumerate(items):
            key = f"{self.p}:msg:{env.id}"
            tx.add(
                "HSET", key,
                "envelope", bodies[at] if bodies is not None else env.to_json(),
                "state", "queued",
                "flow", env.flow,
                "gen", "0",
                "sent", "0",
                "available_at", repr(available_at),
                "created_at", stamp,
                "updated_at", stamp,
                "correlation_id", env.correlation_id,
            )  # fmt: skip
            tx.add("EXPIRE", key, self._ttl_word)
            tx.add("ZADD", f"{self.p}:idx:all", stamp, env.id)
            tx.add("ZADD", f"{self.p}:idx:flow:{env.flow}", stamp, env.id)
            if env.correlation_id != env.id:  # a root is found by its own id (``search``)
                tx.add("ZADD", f"{self.p}:idx:corr:{env.correlation_id}", stamp, env.id)
                tx.add("EXPIRE", f"{self.p}:idx:corr:{env.correlation_id}", self._ttl_word)
            self._index_state(tx, env.id, "queued", stamp, was=())  # a new id: in no state yet

    async def received(
        self,
        items: Sequence[tuple[Envelope, float]],
        entries: Sequence[LedgerEntry],
        now: float,
        *,
        bodies: Sequence[bytes] | None = None,
        claim: tuple[str, bytes, int] | None = None,
    ) -> bytes | None:
        """New queued messages (envelope, available_at) with their 'received' lines, marked
        unconfirmed until :meth:`confirmed`; ``bodies`` are the envelopes' JSON when the caller
        has it already. With ``claim`` (a dedupe key's ``SET NX PX`` arguments) they are written
        only if the claim is won, in the same atomic call; returns the value holding the key
        when it is not won, else None."""
        tx = Tx()
        self._received(tx, items, now, bodies)
        for env, _ in items:
            tx.add("ZADD", self._k("unconfirmed"), now, env.id)
        self._log(tx, entries)
        if claim is None:
            await self.batch.apply(tx)
            return None
        return await self.batch.claim(*claim, tx)

    async def forget(self, ids: Sequence[str]) -> None:
        """Undo ``received`` for messages whose publish failed (nothing was queued)."""
        tx = Tx()
        for mid in ids:
            tx.add("DEL", self._k("msg", mid), self._k("ledger", mid))
            tx.add("ZREM", self._k("idx", "all"), mid)
            tx.add("ZREM", self._k("unconfirmed"), mid)
        await self.batch.apply(tx)

    def confirmed(self, ids: Sequence[str]) -> None:
        """The broker confirmed these ids: take them off ``unconfirmed``, within CONFIRM_FLUSH.

        Not waited for, and one ZREM for all the confirms of that time: an extra pipeline per
        publish cost ~12 % of ingress CPU. A mark lost to a crash only makes a sweeper
        republish a copy, which consumers drop by its generation."""
        self._confirmed.extend(ids)
        if self._confirm_timer is None:
            loop = asyncio.get_running_loop()
            self._confirm_timer = loop.call_later(CONFIRM_FLUSH, self.flush_confirmed)

    def flush_confirmed(self) -> asyncio.Future[object] | None:
        """Send the pending confirm marks now (in the next pipeline, in order); their reply."""
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
            self._confirm_timer = None
        if not self._confirmed:
            return None
        ids, self._confirmed = self._confirmed, []
        fut = self.batch.call("ZREM", self._k("unconfirmed"), *ids)
        fut.add_done_callback(_log_failure)
        return fut

    async def unconfirmed(self, ids: Sequence[str]) -> list[float | None]:
        """When each id was received, for those whose broker confirm is not recorded yet."""
        self.flush_confirmed()
        scores = await self.batch.call("ZMSCORE", self._k("unconfirmed"), *ids)
        return [None if s is None else float(s) for s in scores]

    async def take_stranded(self, cutoff: float, now: float, limit: int) -> list[str]:
        """Ids unconfirmed since before ``cutoff`` (their publisher died), held until ``now``
        plus one stale period for this caller (``TAKE_STRANDED``)."""
        ids = await self.batch.script(TAKE_STRANDED, self._k("unconfirmed"), cutoff, now, limit)
        return [i.decode() for i in ids]

    async def update(
        self,
        envelope: Envelope,
        now: float,
        created_at: float,
        entries: Sequence[LedgerEntry] = (),
        *,
        state: MessageState | None = None,
        gen: int | None = None,
        available_at: float | None = None,
        dead: tuple[str | None, str, Sequence[str]] | None = None,
        outbox: list | None = None,
        children: Sequence[tuple[Envelope, float]] = (),
        was: MessageState | None = None,
    ) -> None:
        """The message's new envelope (and state, generation, dead info, outbox still to send,
        emitted children as new queued messages) plus ledger lines, in one transaction. An
        empty ``outbox`` with ``gen`` records that generation as sent (no ``sent`` to follow).
        ``was``: the state it is leaving, when the caller knows it (one index to leave)."""
        key = self._k("msg", envelope.id)
        stamp, created = repr(now), repr(created_at)
        fields: dict[str, object] = {
            "envelope": envelope.to_json(),
            "updated_at": stamp,
            "flow": envelope.flow,
            "created_at": created,
            "correlation_id": envelope.correlation_id,
        }
        if state is not None:
            fields["state"] = state.value
        if gen is not None:
            fields["gen"] = gen
        if outbox:
            fields["outbox"] = orjson.dumps(outbox)
        elif outbox is not None and gen is not None:  # nothing to publish: sent already
            fields["sent"] = gen
        if available_at is not None:
            fields["available_at"] = repr(available_at)
        tx = Tx()
        if dead is not None:
            step, error, chain = dead
            fields.update(
                error=error,
                step=orjson.dumps(step),
                chain=orjson.dumps(list(chain)),
                dead_at=stamp,
            )
            tx.add("ZADD", self._k("dlq", "all"), stamp, envelope.id)
            tx.add("ZADD", self._k("dlq", "flow", envelope.flow), stamp, envelope.id)
        if state is MessageState.QUEUED:
            tx.add("HDEL", key, "error")
        if outbox == []:
            tx.add("HDEL", key, "outbox")  # an earlier generation's, if its mark was lost
        tx.add("HSET", key, *[word for pair in fields.items() for word in pair])
        tx.add("EXPIRE", key, self._ttl_word)
        self._received(tx, children, now)
        if state is not None:
            leaving = None if was is None else (was.value,)
            self._index_state(tx, envelope.id, state.value, created, was=leaving)
        self._log(tx, entries)
        await self.batch.apply(tx)

    def sent(self, mid: str, gen: int) -> asyncio.Future[object]:
        """Generation ``gen``'s outbox is published: nothing is pending any more (``MARK_SENT``).
        Queued at once, in order; await the result to wait for Redis."""
        fut = self.batch.script_soon(MARK_SENT, self._k("msg", mid), gen)
        fut.add_done_callback(_log_failure)
        return fut

    async def claim_dead(self, mid: str) -> bool:
        """Take ``mid`` off the dead-letter index; True for exactly one caller."""
        return bool(await self.r.zrem(self._k("dlq", "all"), mid))

    async def unclaim_dead(self, mid: str, dead_at: float) -> None:
        await self.r.zadd(self._k("dlq", "all"), {mid: dead_at})

    async def undead(self, mid: str, flow: str) -> None:
        await self.r.zrem(self._k("dlq", "flow", flow), mid)

    async def log(self, entries: Sequence[LedgerEntry]) -> None:
        tx = Tx()
        self._log(tx, entries)
        await self.batch.apply(tx)

    async def prune(self, before: float, flows: Iterable[str]) -> None:
        """Drop index entries older than the ledger ttl (their messages have expired) from the
        indexes by receipt, flow (``flows``: those this process knows), state and dead letters. The
        per-correlation indexes expire by themselves (``_received``): no SCAN of the keyspace,
        which held the event loop 340 ms at 60,000 retained messages (measured) and grew with
        the retention."""
        flows = list(flows)
        keys = [self._k("idx", "all"), *(self._k("idx", "flow", f) for f in flows),
                *(key for key, _ in self._state_idx.values()),
                # dead letters older than the ttl: their records are gone too
                self._k("dlq", "all"), *(self._k("dlq", "flow", f) for f in flows)]
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.zremrangebyscore(k, "-inf", before)
        await pipe.execute()
