"""The reads of the RabbitMQ transport's Redis state: records, histories, search, dead letters.

A mixin of ``RedisLedger`` (keys and their layout: ``rabbitmq_ledger``'s module doc); the hot
read, ``peek``, goes through the ledger's shared pipeline like the writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from bus.envelope import Envelope
from bus.transport.base import DeadLetter, LedgerEntry, MessageRecord, MessageState


@dataclass(frozen=True, slots=True)
class Stored:
    """A message record plus what only the transport needs."""

    record: MessageRecord
    gen: int  # generation of the latest ending / replay recorded
    sent: int  # generation whose outbox was published (sent < gen: outbox still pending)
    outbox: list  # [kind, envelope dict, due, headers] still to publish for generation ``gen``
    created_at: float
    flow: str


@dataclass(frozen=True, slots=True)
class Peek:
    """What admitting a delivery needs from its record (``RedisLedger.peek``)."""

    state: MessageState
    gen: int
    sent: int
    created_at: float
    envelope: bytes  # the latest envelope's JSON, parsed only when the caller needs it
    outbox: list


_PEEK = ("state", "gen", "sent", "created_at", "envelope", "outbox")


def _entry(raw: bytes, mid: str) -> LedgerEntry:
    """A ledger line as ``rabbitmq_ledger.line`` stores it: fields at their default are left
    out, and so is the message id, which the key holds (older lines carry every field)."""
    d = orjson.loads(raw)
    return LedgerEntry(
        message_id=d.get("message_id", mid),
        kind=d["kind"],
        at=d["at"],
        flow=d.get("flow", ""),
        step=d.get("step"),
        attempt=d.get("attempt"),
        outcome=d.get("outcome"),
        error=d.get("error"),
        detail=d.get("detail") or {},
    )


class LedgerReads:
    """Needs ``self.r`` (the client), ``self.batch`` (its RedisBatch) and ``self._k`` (key names)."""

    # ----- reads --------------------------------------------------------------------------
    async def get(self, mid: str) -> Stored | None:
        h = await self.batch.call("HGETALL", self._k("msg", mid))
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

    async def peek(self, mid: str) -> Peek | None:
        """Part of ``get``, on the hot path of every delivery: one HMGET of six fields is a
        third of the reply to parse that HGETALL's map is, and the envelope stays JSON."""
        state, gen, sent, created_at, envelope, outbox = await self.batch.call(
            "HMGET", self._k("msg", mid), *_PEEK
        )
        if state is None:
            return None
        return Peek(
            MessageState(state.decode()),
            gen=int(gen or 0),
            sent=int(sent or 0),
            created_at=float(created_at),
            envelope=envelope,
            outbox=orjson.loads(outbox) if outbox else [],
        )

    async def history(self, mid: str) -> list[LedgerEntry]:
        return [_entry(raw, mid) for raw in await self.r.lrange(self._k("ledger", mid), 0, -1)]

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
        def matches(got: Stored) -> bool:
            return not (
                (flow and got.flow != flow)
                or (state and got.record.state is not state)
                or (correlation_id and got.record.envelope.correlation_id != correlation_id)
            )

        found: list[MessageRecord] = []
        offset, page = 0, max(limit, 50)
        while len(found) < limit:
            ids = await self.r.zrevrangebyscore(index, high, low, start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            for mid in ids:
                got = await self.get(mid.decode())
                if got is None or not matches(got):
                    continue
                found.append(got.record)
                if len(found) == limit:
                    break
        if correlation_id is not None and len(found) < limit:
            # the root is not in its correlation's index; received first, it is listed last
            root = await self.get(correlation_id)
            if (
                root is not None
                and matches(root)
                and all(r.envelope.id != correlation_id for r in found)  # indexed before
                and (since is None or root.created_at >= since)
                and (until is None or root.created_at < until)
            ):
                found.append(root.record)
        return found

    async def dead_summary(self, flow: str) -> tuple[int, float | None]:
        """(count, oldest dead_at) of ``flow``'s dead letters, from its DLQ index."""
        key = self._k("dlq", "flow", flow)
        counting = self.batch.call("ZCARD", key)  # both queued now: one pipeline
        oldest = await self.batch.call("ZRANGE", key, 0, 0, "WITHSCORES")
        count = await counting
        return count, (float(oldest[0][1]) if oldest else None)

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
