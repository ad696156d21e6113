"""Confirmed publishing for the RabbitMQ transport: envelope → AMQP message → broker ack.

Every publish waits for the broker's confirm. While the broker is away (restart, network) a
publish is tried again for a short while, then fails with TransportError so the ingress can
answer 503; a lost confirm may mean the broker did store it, so consumers tolerate duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractExchange

from bus.envelope import Envelope
from bus.errors import TransportError
from bus.transport.rabbitmq_batch import PublishBatch
from bus.transport.rabbitmq_topology import TIER_HEADER, tier_for

log = structlog.get_logger()

Properties = aiormq.spec.Basic.Properties  # what aio_pika.Message.properties builds
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)

# Header names on every AMQP message; the envelope JSON body stays the source of truth.
H_FLOW = "x-tieline-flow"
H_CURSOR = "x-tieline-cursor"
H_ATTEMPT = "x-tieline-attempt"
H_CORRELATION = "x-tieline-correlation-id"
H_DUE = "x-tieline-due-ms"  # epoch milliseconds (an int: AMQP floats may be 32-bit) before which it must not run
H_GEN = "x-tieline-gen"  # bumped each time the transport re-sends a message (retry, replay)
H_ERROR = "x-tieline-error"
H_CHAIN = "x-tieline-error-chain"
H_ATTEMPTS = "x-tieline-attempts"

# What a broker outage looks like from aio-pika / aiormq.
OUTAGE = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    asyncio.TimeoutError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: channel closed or restoring
)


def properties(
    envelope: Envelope, gen: int, due: float, extra: Mapping[str, object] = ()
) -> Properties:
    """The AMQP properties of ``envelope``'s message: persistent, id = envelope id, routing
    headers. Built directly (what ``aio_pika.Message.properties`` would give, minus its cost)."""
    headers: dict[str, object] = {
        H_FLOW: envelope.flow,
        H_CURSOR: envelope.cursor,
        H_ATTEMPT: envelope.attempt,
        H_CORRELATION: envelope.correlation_id,
        H_DUE: int(due * 1000),
        H_GEN: gen,
    }
    if extra:
        headers.update(extra)
    return Properties(
        message_id=envelope.id,
        correlation_id=envelope.correlation_id,
        content_type="application/json",
        delivery_mode=PERSISTENT,
        headers=headers,
    )


class Publisher:
    """Sends messages on a confirm channel's exchanges, retrying through short outages.

    Concurrent sends share socket writes (``PublishBatch``); each still waits for its own confirm.
    """

    def __init__(
        self,
        events: AbstractExchange,
        delay: AbstractExchange,
        dlx: AbstractExchange,
        *,
        give_up_after: float = 5.0,
        clock=time.time,
    ):
        if not (events.channel is delay.channel is dlx.channel):
            raise ValueError(
                "Publisher: declare the events, delay and dlx exchanges on one channel"
            )
        self._events, self._delay, self._dlx = events, delay, dlx
        self.batch = PublishBatch(events.channel, within=give_up_after)
        self._give_up_after = give_up_after
        self._clock = clock

    async def send(
        self, envelope: Envelope, *, gen: int = 0, due: float = 0.0, body: bytes | None = None
    ) -> None:
        """Queue ``envelope`` on its flow, parked in a delay tier while ``due`` is far enough off;
        ``body`` is its JSON when the caller has it already."""
        tier = tier_for(due - self._clock()) if due else None
        if tier is None:
            await self._publish(self._events, envelope, properties(envelope, gen, due), body)
        else:
            props = properties(envelope, gen, due, {TIER_HEADER: tier[1]})
            await self._publish(self._delay, envelope, props, body)

    async def send_many(
        self, items: Sequence[tuple[Envelope, float, bytes | None]], gen: int = 0
    ) -> None:
        """Send (envelope, due, body or None) triples concurrently: they share writes and confirms."""
        if len(items) == 1:  # the common case, without gather's tasks
            env, due, body = items[0]
            await self.send(env, gen=gen, due=due, body=body)
            return
        await asyncio.gather(
            *(self.send(env, gen=gen, due=due, body=body) for env, due, body in items)
        )

    async def dead(self, envelope: Envelope, gen: int, headers: Mapping[str, object]) -> None:
        """Archive a dead letter in its flow's DLQ, the error and attempts in its headers."""
        await self._publish(self._dlx, envelope, properties(envelope, gen, 0.0, headers))

    async def _publish(
        self,
        exchange: AbstractExchange,
        envelope: Envelope,
        props: Properties,
        body: bytes | None = None,
    ) -> None:
        """Publish on ``exchange`` with the flow as routing key; returns once confirmed."""
        body = envelope.to_json() if body is None else body
        key, msg_id = envelope.flow, envelope.id
        deadline = time.monotonic() + self._give_up_after
        pause = 0.05
        retry = False
        while True:
            try:
                if exchange.channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError(f"{exchange.channel} closed")
                if not retry:  # the batch's timer covers waiting out a reconnect and the confirm
                    await self.batch.publish(exchange.name, key, body, props)
                else:  # only what is left of the time
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                        await self.batch.publish(exchange.name, key, body, props, timed=False)
                return
            except aio_pika.exceptions.DeliveryError as exc:  # the broker said no: do not retry
                raise TransportError(
                    f"rabbitmq: broker refused message {msg_id} for {exchange.name}/{key}: "
                    f"{exc}; check the queue's limits and the broker log"
                ) from exc
            except OUTAGE as exc:
                if time.monotonic() + pause >= deadline:
                    raise TransportError(
                        f"rabbitmq: could not publish message {msg_id} to "
                        f"{exchange.name}/{key} within {self._give_up_after}s "
                        f"({type(exc).__name__}: {exc}); is the broker up? retry later"
                    ) from exc
                log.warning("transport.publish_retry", message_id=msg_id, error=repr(exc))
                retry = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
