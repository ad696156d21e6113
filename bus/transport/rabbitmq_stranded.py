"""Ingress publishes whose process died between Redis and the broker's confirm.

``RabbitTransport.publish`` writes the record (and takes the dedupe key) in Redis first, then
waits for the broker's confirm, then the ingress answers 202. A process killed between the two
leaves a record saying 'queued', and a dedupe key, for a message the broker never got: the
sender's repeat would be answered 'duplicate' and the message would never run. So each received
id sits in ``p:unconfirmed`` until its confirm is recorded, and:

- a repeat whose first copy is unconfirmed and younger than ``stale_after`` waits a moment for
  its confirm, then is refused with TransportError (503 + Retry-After): that publish may still
  be on its way;
- an unconfirmed id older than ``stale_after`` was stranded (a live publisher gives up, and undoes
  its records, after ``publish_timeout``, which ``stale_after`` exceeds): it is republished from
  its record, by a repeat that finds it or by the sweeper every process runs.

A republished copy of a message the broker did hold (the process died after the confirm, before
its mark reached Redis) is a second copy of generation 0; once the first copy's run has ended,
``admit`` drops it as stale.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from bus.errors import TransportError
from bus.transport.base import LedgerEntry, MessageState
from bus.transport.rabbitmq_publisher import OUTAGE

if TYPE_CHECKING:
    from bus.transport.rabbitmq import RabbitTransport

log = structlog.get_logger()

SWEEP_BATCH = 100  # stranded ids taken per sweep round
REPEAT_WAIT = 1.0  # seconds a repeat waits for its first copy's confirm before a 503
REPEAT_POLL = 0.02


async def check_first_copy(t: RabbitTransport, dedupe_key: str, first: Sequence[str]) -> None:
    """Before answering a repeat 'duplicate': make sure the first copy reached the broker.

    Waits up to REPEAT_WAIT for a first copy still on its way (two senders racing), then raises
    TransportError (the sender comes back); republishes a stranded one."""
    deadline = t.clock() + REPEAT_WAIT
    while True:
        scores = await t.ledger.unconfirmed(first)
        now = t.clock()
        pending = [at for at in scores if at is not None]
        if not pending:
            return
        if all(now - at >= t.stale_after for at in pending):
            await sweep(t)  # takes these (or another process holds them, republishing them now)
            return
        if now >= deadline:
            raise TransportError(
                f"rabbitmq transport: the first copy of {dedupe_key!r} is still being published; "
                "retry in a second"
            )
        await asyncio.sleep(REPEAT_POLL)


async def republish(t: RabbitTransport, mid: str) -> None:
    """Queue stranded ``mid`` again from its record, then mark it confirmed."""
    stored = await t.ledger.get(mid)
    if stored is not None and stored.gen == 0 and stored.record.state is MessageState.QUEUED:
        envelope = stored.record.envelope
        await t.ensure_flow(envelope.flow)
        at = stored.record.available_at
        # logged first, so the history reads in order (a failed send is retried next round)
        why = {"why": "the process that received it stopped before the broker confirmed it"}
        await t.ledger.log([LedgerEntry(mid, "republished", t.clock(), flow=envelope.flow,
                                        detail=why)])
        await t.publisher.send(envelope, gen=0, due=at if at > stored.created_at else 0.0)
        log.warning("transport.republished_stranded", message_id=mid, flow=envelope.flow)
    # else it ran (gen > 0), or was forgotten or expired: it was in the broker, or is gone
    t.ledger.confirmed([mid])


async def sweep_forever(t: RabbitTransport, every: float) -> None:
    """Republish stranded ids (see the module doc) every ``every`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await sweep(t)
        except (TransportError, OSError, *OUTAGE) as exc:  # an outage: the next round tries again
            log.warning("transport.sweep_failed", error=repr(exc))
        except Exception as exc:  # noqa: BLE001 - a Redis error must not end the sweeper
            log.error("transport.sweep_failed", error=repr(exc))


async def sweep(t: RabbitTransport) -> int:
    """One round: republish what is stranded now; the number of ids taken."""
    now = t.clock()
    taken = await t.ledger.take_stranded(now - t.stale_after, now, SWEEP_BATCH)
    for mid in taken:
        await republish(t, mid)
    return len(taken)
