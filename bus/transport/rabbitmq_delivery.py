"""One RabbitMQ message handed to a consumer, and the rules for taking a message in.

Each ending is an outbox, in this order: (1) one Redis transaction records the new state, the
ledger lines, a new generation and the messages still to publish (the outbox); (2) the outbox is
published with confirms (retry copy, emitted children, DLQ archive); (3) Redis marks that
generation sent (unless a later ending recorded a newer one); (4) the delivery is acked, the
mark queued before it but its reply not waited for. An empty outbox is recorded sent in (1),
and (2) and (3) are skipped. (1) runs in the handler; (2)-(4) in ``send``, once the handler has
given its concurrency slot back: the slot bounds what a sink sees at once, and the broker's
confirm (a disk write) would otherwise hold it for most of a delivery's time. A crash before the
ack lands leaves the
delivery unacked, so RabbitMQ redelivers it, and ``admit`` decides from Redis what the
redelivery means:

    message gen < stored gen, outbox pending  → publish the outbox, ack (finish the ending)
    message gen < stored gen, outbox sent     → stale copy, ack and drop
    message gen = stored gen                  → run it, from the stored (checkpointed) envelope
                                                if its cursor is further
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import structlog

from bus.envelope import Envelope
from bus.transport.base import Delivery, LedgerEntry, MessageState
from bus.transport.entries import (
    check_ending,
    complete_lines,
    dead_lines,
    retry_lines,
)
from bus.transport.rabbitmq_inbound import Inbound
from bus.transport.rabbitmq_publisher import H_ATTEMPTS, H_CHAIN, H_ERROR, H_GEN
from bus.transport.rabbitmq_reads import Peek

if TYPE_CHECKING:
    from bus.transport.rabbitmq import RabbitTransport

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Out:
    """One outbox item: ``kind`` 'flow' (queue it) or 'dead' (archive it in the DLQ)."""

    kind: str
    env: Envelope
    due: float
    gen: int
    headers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "env": self.env.to_dict(), "due": self.due, "gen": self.gen,
                "headers": self.headers}

    @classmethod
    def from_dict(cls, d: dict) -> Out:
        return cls(d["kind"], Envelope.from_dict(d["env"]), d["due"], d["gen"], d["headers"])


def out(kind: str, env: Envelope, due: float, gen: int, headers: dict | None = None) -> Out:
    return Out(kind, env, due, gen, headers or {})


async def flush(
    t: RabbitTransport, mid: str, gen: int, outbox: Sequence[Out], *, wait: bool = True
) -> None:
    """Publish an outbox (confirmed, the sends in flight together), then mark its generation
    sent; with ``wait=False`` the mark is queued in order but its reply not waited for."""
    flows = [i for i in outbox if i.kind == "flow"]
    for i in flows:
        await t.ensure_flow(i.env.flow)
    for i in outbox:
        if i.kind == "dead":
            await t.publisher.dead(i.env, i.gen, i.headers)
    if len(flows) == 1:  # the common case, without gather's tasks
        await t.publisher.send(flows[0].env, gen=flows[0].gen, due=flows[0].due)
    elif flows:
        await asyncio.gather(*(t.publisher.send(i.env, gen=i.gen, due=i.due) for i in flows))
    marked = t.ledger.sent(mid, gen)
    if wait:
        await marked


@dataclass(slots=True)
class Admission:
    envelope: Envelope | None  # None: nothing to run (ended or stale copy)
    stored: Peek | None


async def admit(
    t: RabbitTransport, message: Inbound, envelope: Envelope
) -> Admission:
    """Decide, from Redis, whether this (re)delivery runs and from which envelope."""
    gen = int((message.headers or {}).get(H_GEN, 0))  # type: ignore[arg-type]
    stored = await t.ledger.peek(envelope.id)
    if stored is None:  # Redis lost it (expired, flushed): the message itself is the truth
        return Admission(envelope, None)
    if gen < stored.gen:
        if stored.sent < stored.gen:
            log.warning("transport.outbox_finished", message_id=envelope.id, gen=stored.gen)
            await flush(t, envelope.id, stored.gen, [Out.from_dict(i) for i in stored.outbox])
        return Admission(None, stored)
    if stored.state is not MessageState.QUEUED:
        return Admission(None, stored)
    if stored.envelope == message.body:  # as published: no checkpoint since (the usual case)
        return Admission(envelope, stored)
    current = Envelope.from_json(stored.envelope)
    return Admission(current if current.cursor > envelope.cursor else envelope, stored)


class RabbitDelivery(Delivery):
    """A delivery; ``current`` is the latest checkpointed envelope (what a crash retry runs)."""

    def __init__(
        self,
        t: RabbitTransport,
        message: Inbound,
        envelope: Envelope,
        stored: Peek | None,
    ):
        self.envelope = envelope
        self.current = envelope
        self._t = t
        self._msg = message
        self._gen = stored.gen if stored else int((message.headers or {}).get(H_GEN, 0))  # type: ignore[arg-type]
        self._created_at = stored.created_at if stored else t.clock()
        # admit runs only queued records: the one state index an ending leaves
        self._was = MessageState.QUEUED if stored else None
        self._ended = False
        self._outbox: list[Out] | None = None  # recorded (generation _gen + 1), for ``send``

    async def _end(self, envelope: Envelope, outbox: list[Out], **update: object) -> None:
        """Record (Redis): the ending is durable once this returns. The outbox is published and
        the delivery acked by ``send``, after the handler has given its slot back."""
        self._ended = True  # claimed now so a second ending call fails fast
        gen = self._gen + 1
        try:
            await self._t.ledger.update(
                envelope,
                self._t.clock(),
                self._created_at,
                gen=gen,
                outbox=[i.to_dict() for i in outbox],
                was=self._was,
                **update,  # type: ignore[arg-type]
            )
        except BaseException:
            self._ended = False
            raise
        self.current = envelope
        self._outbox = outbox

    async def send(self) -> None:
        """Publish the recorded outbox (confirmed), mark it sent, ack; nothing if not ended.

        The ack does not wait for the sent mark's reply (a Redis round trip, ~15 % of a
        delivery's time): once the ack lands, no copy of this generation comes back to read
        the mark; if the ack is lost too, the redelivery re-sends the outbox, as after a crash
        before the mark."""
        outbox, self._outbox = self._outbox, None
        if outbox is None:
            return
        if outbox:  # an empty one was recorded as sent by the update (one script call less)
            await flush(self._t, self.current.id, self._gen + 1, outbox, wait=False)
        await self._t.ack(self._msg)

    async def checkpoint(self, envelope: Envelope, entries: Sequence[LedgerEntry] = ()) -> None:
        self._check(envelope, "checkpoint")
        await self._t.ledger.update(envelope, self._t.clock(), self._created_at, entries)
        self.current = envelope

    async def complete(
        self,
        state: MessageState,
        envelope: Envelope,
        entries: Sequence[LedgerEntry] = (),
        emit: Sequence[tuple[Envelope, float]] = (),
    ) -> None:
        self._check(envelope, "complete")
        check_ending(envelope, state)
        now = self._t.clock()
        lines = complete_lines(envelope, state, now, entries, emit)
        children = [(child, now + max(delay, 0.0)) for child, delay in emit]
        outbox = [out("flow", child, at if at > now else 0.0, 0) for child, at in children]
        await self._end(envelope, outbox, entries=lines, state=state, children=children)

    async def retry(
        self, envelope: Envelope, delay: float, entries: Sequence[LedgerEntry] = ()
    ) -> None:
        self._check(envelope, "retry")
        now = self._t.clock()
        due = now + max(delay, 0.0)
        lines = retry_lines(envelope, now, delay, due, entries)
        outbox = [out("flow", envelope, due if delay > 0 else 0.0, self._gen + 1)]
        await self._end(envelope, outbox, entries=lines, available_at=due)

    async def dead(
        self,
        envelope: Envelope,
        error: str,
        error_chain: Sequence[str],
        entries: Sequence[LedgerEntry] = (),
    ) -> None:
        self._check(envelope, "dead")
        now = self._t.clock()
        step, lines = dead_lines(envelope, now, error, entries)
        history = await self._t.ledger.history(envelope.id)
        attempts = [e.to_dict() for e in [*history, *lines] if e.kind == "step"]
        headers = {
            H_ERROR: error,
            H_CHAIN: orjson.dumps(list(error_chain)).decode(),
            H_ATTEMPTS: orjson.dumps(attempts).decode(),
        }
        outbox = [out("dead", envelope, 0.0, self._gen + 1, headers)]
        await self._end(
            envelope,
            outbox,
            entries=lines,
            state=MessageState.DEAD,
            dead=(step, error, error_chain),
        )
