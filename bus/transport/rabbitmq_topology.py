"""RabbitMQ names and declarations for one tieline prefix; docs/rabbitmq.md draws the picture.

Every name starts with the prefix, so several buses (or test runs) share one broker safely.
Declarations are idempotent: start() and every reconnect declare the same things again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# Delay tiers (seconds, label): a delay is split into the largest tier <= what remains.
TIERS: tuple[tuple[float, str], ...] = (
    (1, "1s"),
    (5, "5s"),
    (30, "30s"),
    (120, "2m"),
    (600, "10m"),
    (3600, "1h"),
    (21600, "6h"),
    (86400, "1d"),
)
TIER_HEADER = "tieline-tier"  # headers exchanges ignore x- headers when matching


def tier_for(remaining: float) -> tuple[float, str] | None:
    """The largest tier not longer than ``remaining``; None when below the smallest tier."""
    fit = [t for t in TIERS if t[0] <= remaining]
    return fit[-1] if fit else None


@dataclass(frozen=True, slots=True)
class Names:
    """All broker names of one prefix."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def delay(self) -> str:
        return f"{self.prefix}.delay"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    def flow(self, flow: str) -> str:
        return f"{self.prefix}.flow.{flow}"

    def dlq(self, flow: str) -> str:
        return f"{self.prefix}.dlq.{flow}"

    def tier(self, label: str) -> str:
        return f"{self.prefix}.delay.{label}"

    def exchanges(self) -> list[str]:
        return [self.events, self.delay, self.dlx]

    def tier_queues(self) -> list[str]:
        return [self.tier(label) for _, label in TIERS]


@dataclass(slots=True)
class Exchanges:
    events: AbstractExchange
    delay: AbstractExchange
    dlx: AbstractExchange


def _queue_args(quorum: bool, **extra: object) -> dict[str, object]:
    return {"x-queue-type": "quorum" if quorum else "classic", **extra}


async def declare_base(channel: AbstractChannel, names: Names, quorum: bool) -> Exchanges:
    """Exchanges and delay tiers: each tier queue's TTL dead-letters back into the events exchange
    with the message's own routing key (its flow), so different delays never block each other."""
    events = await channel.declare_exchange(names.events, aio_pika.ExchangeType.TOPIC, durable=True)
    delay = await channel.declare_exchange(names.delay, aio_pika.ExchangeType.HEADERS, durable=True)
    dlx = await channel.declare_exchange(names.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
    for seconds, label in TIERS:
        queue = await channel.declare_queue(
            names.tier(label),
            durable=True,
            arguments=_queue_args(
                quorum,
                **{"x-message-ttl": int(seconds * 1000), "x-dead-letter-exchange": names.events},
            ),
        )
        await queue.bind(delay, arguments={"x-match": "all", TIER_HEADER: label})
    return Exchanges(events, delay, dlx)


async def declare_flow(
    channel: AbstractChannel, names: Names, ex: Exchanges, flow: str, quorum: bool
) -> AbstractQueue:
    """The flow's work queue (rejects go to its DLQ) and its DLQ; returns the work queue."""
    dlq = await channel.declare_queue(names.dlq(flow), durable=True, arguments=_queue_args(quorum))
    await dlq.bind(ex.dlx, routing_key=flow)
    queue = await channel.declare_queue(
        names.flow(flow),
        durable=True,
        arguments=_queue_args(
            quorum, **{"x-dead-letter-exchange": names.dlx, "x-dead-letter-routing-key": flow}
        ),
    )
    await queue.bind(ex.events, routing_key=flow)
    return queue


async def count(channel: AbstractChannel, queues: Sequence[str]) -> int:
    """Ready messages in ``queues``, by passive declares on aiormq's channel: aio-pika's robust
    channel answers a passive declare of a queue it declared before from its cache (a stale count)."""
    underlay = await channel.get_underlay_channel()
    total = 0
    for name in queues:
        total += (await underlay.queue_declare(name, passive=True)).message_count or 0
    return total


async def delete_all(channel: AbstractChannel, names: Names, flows: Sequence[str]) -> None:
    """Remove every queue and exchange of ``names`` for ``flows`` (tests, tooling)."""
    for flow in flows:
        await channel.queue_delete(names.flow(flow))
        await channel.queue_delete(names.dlq(flow))
    for queue in names.tier_queues():
        await channel.queue_delete(queue)
    for exchange in names.exchanges():
        await channel.exchange_delete(exchange)
