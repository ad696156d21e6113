"""Deliveries taken straight off aiormq's channel, without aio_pika's IncomingMessage.

aio_pika wraps every delivery in an IncomingMessage, which parses each AMQP property into an
attribute (timestamps into datetimes, every setattr checked) and runs the callback in a task of
its own; a worker reads only the body, two headers and the message id. That wrapping was 5-7 %
of a worker's CPU in the distributed benchmark's profile (bench/RESULTS.md, session 12).

Acks go through the consumer's ``AckBatch``: the acks of one tick share a socket write.

The consumer sits on the robust channel's aiormq channel. aio_pika restores only the consumers it
registered itself, so this one registers again, with its tag, each time the channel reopens
after a reconnect, and again after the broker cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import MessageProcessError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.transport.rabbitmq_acks import AckBatch

log = structlog.get_logger()

RECONSUME_DELAY = 1.0  # seconds before consuming again after the broker cancelled us


class Inbound:
    """One delivery: its body, headers and message id, settled exactly once (ack, nack, reject).

    Settling twice raises MessageProcessError, as aio_pika does: a second ack of one delivery tag
    is a channel error that would close the channel under every other delivery on it."""

    __slots__ = ("body", "headers", "message_id", "_channel", "_tag", "_settled", "_acks")

    def __init__(self, delivered: DeliveredMessage, acks: AckBatch | None = None):
        props = delivered.header.properties
        self.body: bytes = delivered.body
        self.headers = props.headers
        self.message_id: str | None = props.message_id
        self._channel = delivered.channel  # the one it came on: tags are per channel
        self._tag: int = delivered.delivery.delivery_tag  # type: ignore[union-attr]
        self._settled = False
        self._acks = acks  # shared with the consumer's other deliveries: one write for many

    def _settle(self) -> None:
        if self._settled:
            raise MessageProcessError("Message already processed", self)
        self._settled = True

    async def ack(self) -> None:
        self._settle()
        if self._acks is None:
            await self._channel.basic_ack(self._tag)
        else:
            await self._acks.ack(self._channel, self._tag)

    async def nack(self, requeue: bool = True) -> None:
        self._settle()
        await self._channel.basic_nack(self._tag, requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        self._settle()
        await self._channel.basic_reject(self._tag, requeue=requeue)


class InboundConsumer:
    """Consumes ``queue`` on ``channel``, handing each delivery to ``on_message`` (called
    synchronously: it starts the delivery's own task and returns)."""

    def __init__(
        self, channel: AbstractRobustChannel, queue: str, on_message: Callable[[Inbound], None]
    ):
        self._channel = channel
        self.queue = queue
        self._on_message = on_message
        self._acks = AckBatch()
        self.tag: str | None = None
        self._cancelled = False
        self._retry: asyncio.Task[None] | None = None  # held: a task nobody holds can be collected

    async def start(self) -> None:
        await self._consume()
        self._channel.reopen_callbacks.add(self._on_reopen)

    async def cancel(self) -> None:
        """No new deliveries (those in flight may still be settled)."""
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._retry is not None:
            self._retry.cancel()
        if self.tag is not None:
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_cancel(self.tag)

    async def _consume(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        ok = await underlay.basic_consume(self.queue, self._delivered, consumer_tag=self.tag)
        self.tag = ok.consumer_tag

    async def _delivered(self, delivered: DeliveredMessage) -> None:
        self._on_message(Inbound(delivered, self._acks))

    async def _on_reopen(self, _channel: object) -> None:
        # aio_pika gathers reopen callbacks with return_exceptions: a failure must be said here
        try:
            await self._consume()
        except Exception as exc:
            log.error("transport.reconsume_failed", queue=self.queue, error=repr(exc))
            raise

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        # the broker ends a consumer when its queue is deleted or moves (a quorum queue's node)
        if frame.consumer_tag != self.tag or self._cancelled:
            return
        log.warning("transport.consumer_cancelled_by_broker", queue=self.queue)
        self._retry = asyncio.get_running_loop().create_task(self._after_broker_cancel())

    async def _after_broker_cancel(self) -> None:
        await asyncio.sleep(RECONSUME_DELAY)
        if self._cancelled:
            return
        try:
            await self._consume()
            log.info("transport.consuming_again", queue=self.queue)
        except Exception as exc:
            log.error("transport.reconsume_failed", queue=self.queue, error=repr(exc))
