"""Taking one RabbitMQ delivery through a handler: parse, wait out its due time, admit, run,
then publish what its ending recorded and ack.

Only the run holds one of the flow's concurrency slots; the steps before and after it are the
transport's own work and overlap with other deliveries' runs.

A message whose due time is still a tier or more away is parked again (delays longer than
the largest tier hop through several); one due within the smallest tier is slept on here.
A handler that raises is logged and its message retried after CRASH_RETRY_DELAY; a broker or
Redis outage mid-way leaves the delivery unacked, so RabbitMQ hands it out again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from bus.envelope import Envelope
from bus.errors import TransportError
from bus.transport import rabbitmq_topology as topo
from bus.transport.base import Handler, LedgerEntry, run_handler
from bus.transport.rabbitmq_delivery import RabbitDelivery, admit
from bus.transport.rabbitmq_inbound import Inbound
from bus.transport.rabbitmq_publisher import H_DUE, H_GEN, OUTAGE

if TYPE_CHECKING:
    from bus.transport.rabbitmq import RabbitTransport

log = structlog.get_logger()

CRASH_RETRY_DELAY = 1.0  # seconds before a message whose handler raised runs again


async def deliver(
    t: RabbitTransport, handler: Handler, message: Inbound, slots: asyncio.Semaphore
) -> None:
    """Parse, wait out the due time and admit outside ``slots``, run the handler in one, then
    publish the ending's outbox and ack outside it again.

    ``slots`` bounds only the handlers (the flow's concurrency: what a sink sees at once). The
    read-ahead deliveries the channel's prefetch allows beyond it wait for a slot with their
    record already read, so a slot is not held over that Redis round trip, nor over the
    broker's confirm of what the ending publishes.
    """
    try:
        envelope = Envelope.from_json(message.body)
    except (ValueError, KeyError, TypeError) as exc:  # not ours: park it in the DLQ
        log.error("transport.bad_message", message_id=message.message_id, error=repr(exc))
        await message.reject(requeue=False)
        return
    try:
        delivery = await _admit(t, message, envelope)
        if delivery is None:
            return
        async with slots:
            if t.closing:  # admitted ahead, not started: another worker (or our restart) runs it
                await message.nack(requeue=True)
                return
            await run_handler(handler, delivery, lambda why: _crash_retry(t, delivery, why),
                              passthrough=(TransportError, *OUTAGE))
        await delivery.send()  # the ending's outbox and ack, outside the slot
    except (TransportError, *OUTAGE) as exc:  # unacked: it comes back
        log.warning("transport.delivery_interrupted", message_id=envelope.id, error=repr(exc))
        try:
            await message.nack(requeue=True)
        except OUTAGE:
            pass


async def _admit(
    t: RabbitTransport, message: Inbound, envelope: Envelope
) -> RabbitDelivery | None:
    """The delivery to run, or None once the message was parked again or dropped (acked)."""
    headers = message.headers or {}
    due = int(headers.get(H_DUE) or 0) / 1000  # type: ignore[arg-type]
    remaining = due - t.clock()
    if remaining > 0:
        if topo.tier_for(remaining) is not None:  # not yet: park it in the next tier
            gen = int(headers.get(H_GEN) or 0)  # type: ignore[arg-type]
            await t.publisher.send(envelope, gen=gen, due=due)
            await t.ack(message)
            return None
        await asyncio.sleep(remaining)
    admission = await admit(t, message, envelope)
    if admission.envelope is None:
        await t.ack(message)
        return None
    return RabbitDelivery(t, message, admission.envelope, admission.stored)


async def _crash_retry(t: RabbitTransport, delivery: RabbitDelivery, error: str) -> None:
    envelope = delivery.current
    entry = LedgerEntry(
        envelope.id,
        "step",
        t.clock(),
        flow=envelope.flow,
        step=f"cursor {envelope.cursor}",
        attempt=envelope.attempt,
        outcome="retry",
        error=error,
    )
    await delivery.retry(envelope, CRASH_RETRY_DELAY, [entry])
