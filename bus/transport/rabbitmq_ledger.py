"""The RabbitMQ transport's ledger, message records and dead-letter index, in Redis.

Keys (``p`` = prefix), each message's keys expire ``ttl`` seconds after its last write:

    p:msg:{id}          hash: envelope (latest, incl. checkpoints), state, gen, sent, outbox,
                        times, error, dead info
    p:ledger:{id}       list of LedgerEntry JSON, in write order
    p:idx:all / p:idx:flow:{flow} / p:idx:state:{state} / p:idx:corr:{cid}
                        sorted sets of ids by first receipt, for search (pruned past ttl)
    p:dlq:all / p:dlq:flow:{flow}
                        sorted sets of dead-letter ids by dead_at

Each write is one MULTI/EXEC, so a reader never sees a state without its ledger lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bus.envelope import Envelope
from bus.transport.base import DeadLetter, LedgerEntry, MessageRecord, MessageState

_STATES = [s.value for s in MessageState]


@dataclass(frozen=True, slots=True)
class Stored:
    """A message record plus what only the transport needs."""

    record: MessageRecord
    gen: int  # generation of the latest ending / replay recorded
    sent: int  # generation whose outbox was published (sent < gen: outbox still pending)
    outbox: list  # [kind, envelope dict, due, headers] still to publish for generation ``gen``
    created_at: float
    flow: str


def _entry(raw: bytes) -> LedgerEntry:
    d = orjson.loads(raw)
    return LedgerEntry(
        message_id=d["message_id"],
        kind=d["kind"],
        at=d["at"],
        flow=d["flow"],
        step=d["step"],
        attempt=d["attempt"],
        outcome=d["outcome"],
        error=d["error"],
        detail=d["detail"],
    )


class RedisLedger:
    def __init__(self, redis: Redis, prefix: str, ttl: float):
        self.r = redis
        self.p = prefix
        self.ttl = int(ttl)

    def _k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    def _log(self, pipe: Pipeline, entries: Iterable[LedgerEntry]) -> None:
        by_id: dict[str, list[bytes]] = {}
        for e in entries:
            by_id.setdefault(e.message_id, []).append(orjson.dumps(e.to_dict()))
        for mid, lines in by_id.items():
            pipe.rpush(self._k("ledger", mid), *lines)
            pipe.expire(self._k("ledger", mid), self.ttl)

    def _index_state(self, pipe: Pipeline, mid: str, state: str, created_at: float) -> None:
        for other in _STATES:
            if other != state:
                pipe.zrem(self._k("idx", "state", other), mid)
        pipe.zadd(self._k("idx", "state", state), {mid: created_at})

    # ----- writes -------------------------------------------------------------------------
    def _received(
        self, pipe: Pipeline, items: Iterable[tuple[Envelope, float]], now: float
    ) -> None:
        for env, available_at in items:
            key = self._k("msg", env.id)
            pipe.hset(
                key,
                mapping={
                    "envelope": env.to_json(),
                    "state": "queued",
                    "flow": env.flow,
                    "gen": 0,
                    "sent": 0,
                    "available_at": available_at,
                    "created_at": now,
                    "updated_at": now,
                    "correlation_id": env.correlation_id,
                },
            )
            pipe.expire(key, self.ttl)
            for idx in (("all",), ("flow", env.flow), ("corr", env.correlation_id)):
                pipe.zadd(self._k("idx", *idx), {env.id: now})
            self._index_state(pipe, env.id, "queued", now)

    async def received(
        self, items: Sequence[tuple[Envelope, float]], entries: Sequence[LedgerEntry], now: float
    ) -> None:
        """New queued messages (envelope, available_at) with their 'received' lines."""
        pipe = self.r.pipeline(transaction=True)
        self._received(pipe, items, now)
        self._log(pipe, entries)
        await pipe.execute()

    async def forget(self, ids: Sequence[str]) -> None:
        """Undo ``received`` for messages whose publish failed (nothing was queued)."""
        pipe = self.r.pipeline(transaction=True)
        for mid in ids:
            pipe.delete(self._k("msg", mid), self._k("ledger", mid))
            pipe.zrem(self._k("idx", "all"), mid)
        await pipe.execute()

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
    ) -> None:
        """The message's new envelope (and state, generation, dead info, outbox still to send,
        emitted children as new queued messages) plus ledger lines, in one transaction."""
        key = self._k("msg", envelope.id)
        fields: dict[str, object] = {
            "envelope": envelope.to_json(),
            "updated_at": now,
            "flow": envelope.flow,
            "created_at": created_at,
            "correlation_id": envelope.correlation_id,
        }
        if state is not None:
            fields["state"] = state.value
        if gen is not None:
            fields["gen"] = gen
        if outbox is not None:
            fields["outbox"] = orjson.dumps(outbox)
        if available_at is not None:
            fields["available_at"] = available_at
        pipe = self.r.pipeline(transaction=True)
        if dead is not None:
            step, error, chain = dead
            fields.update(
                error=error, step=orjson.dumps(step), chain=orjson.dumps(list(chain)), dead_at=now
            )
            pipe.zadd(self._k("dlq", "all"), {envelope.id: now})
            pipe.zadd(self._k("dlq", "flow", envelope.flow), {envelope.id: now})
        if state is MessageState.QUEUED:
            pipe.hdel(key, "error")
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.ttl)
        self._received(pipe, children, now)
        if state is not None:
            self._index_state(pipe, envelope.id, state.value, created_at)
        self._log(pipe, entries)
        await pipe.execute()

    async def sent(self, mid: str, gen: int) -> None:
        """Generation ``gen``'s outbox is published: nothing is pending any more."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k("msg", mid), "sent", gen)
        pipe.hdel(self._k("msg", mid), "outbox")
        await pipe.execute()

    async def claim_dead(self, mid: str) -> bool:
        """Take ``mid`` off the dead-letter index; True for exactly one caller."""
        return bool(await self.r.zrem(self._k("dlq", "all"), mid))

    async def unclaim_dead(self, mid: str, dead_at: float) -> None:
        await self.r.zadd(self._k("dlq", "all"), {mid: dead_at})

    async def undead(self, mid: str, flow: str) -> None:
        await self.r.zrem(self._k("dlq", "flow", flow), mid)

    async def log(self, entries: Sequence[LedgerEntry]) -> None:
        pipe = self.r.pipeline(transaction=True)
        self._log(pipe, entries)
        await pipe.execute()

    async def prune(self, before: float) -> None:
        """Drop index entries older than the ledger ttl (their messages have expired)."""
        keys = [k async for k in self.r.scan_iter(match=self._k("idx", "*"), count=500)]
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.zremrangebyscore(k, "-inf", before)
        await pipe.execute()

    # ----- reads --------------------------------------------------------------------------
    async def get(self, mid: str) -> Stored | None:
        h = await self.r.hgetall(self._k("msg", mid))
        if not h:
            return None
        record = MessageRecord(
            envelope=Envelope.from_json(h[b"envelope"]),
            state=MessageState(h[b"state"].decode()),
            available_at=float(h.get(b"available_at", 0)),
            updated_at=float(h[b"updated_at"]),
            error=h[b"error"].decode() if b"error" in h else None,
        )
        return Stored(
            record,
            gen=int(h.get(b"gen", 0)),
            sent=int(h.get(b"sent", 0)),
            outbox=orjson.loads(h[b"outbox"]) if b"outbox" in h else [],
            created_at=float(h[b"created_at"]),
            flow=h[b"flow"].decode(),
        )

    async def history(self, mid: str) -> list[LedgerEntry]:
        return [_entry(raw) for raw in await self.r.lrange(self._k("ledger", mid), 0, -1)]

    async def search(
        self,
        *,
        flow: str | None,
        state: MessageState | None,
        correlation_id: str | None,
        since: float | None,
        until: float | None,
        limit: int,
    ) -> list[MessageRecord]:
        """Walk the most selective index newest first, checking the other filters on each record."""
        if correlation_id is not None:
            index = self._k("idx", "corr", correlation_id)
        elif flow is not None:
            index = self._k("idx", "flow", flow)
        elif state is not None:
            index = self._k("idx", "state", state.value)
        else:
            index = self._k("idx", "all")
        high = f"({until}" if until is not None else "+inf"
        low = since if since is not None else "-inf"
        found: list[MessageRecord] = []
        offset, page = 0, max(limit, 50)
        while len(found) < limit:
            ids = await self.r.zrevrangebyscore(index, high, low, start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            for mid in ids:
                got = await self.get(mid.decode())
                if got is None:
                    continue
                rec = got.record
                if (
                    (flow and got.flow != flow)
                    or (state and rec.state is not state)
                    or (correlation_id and rec.envelope.correlation_id != correlation_id)
                ):
                    continue
                found.append(rec)
                if len(found) == limit:
                    break
        return found

    async def dead_letters(self, flow: str | None, limit: int) -> list[DeadLetter]:
        index = self._k("dlq", "flow", flow) if flow is not None else self._k("dlq", "all")
        ids = await self.r.zrevrange(index, 0, limit - 1)
        letters = [await self.dead_letter(mid.decode()) for mid in ids]
        return [d for d in letters if d is not None]

    async def dead_letter(self, mid: str) -> DeadLetter | None:
        h = await self.r.hgetall(self._k("msg", mid))
        if not h or h.get(b"state") != b"dead":
            return None
        return DeadLetter(
            message_id=mid,
            flow=h[b"flow"].decode(),
            envelope=Envelope.from_json(h[b"envelope"]),
            step=orjson.loads(h[b"step"]),
            error=h[b"error"].decode(),
            error_chain=orjson.loads(h[b"chain"]),
            attempts=[e for e in await self.history(mid) if e.kind == "step"],
            dead_at=float(h[b"dead_at"]),
        )
