"""Group publishing on a confirm channel: publishes issued while a write is in flight share the next.

aiormq's ``basic_publish`` costs, per message, a channel-lock round, two timeouts, a drain
future, a slot in the connection's write queue (ten slots, shared by every channel) and a wake-up
of its writer task. Here a publish queues (exchange, routing key, body, properties) and gets a
future; one drain task takes what is queued and, under the channel lock, gives each message its
delivery tag and confirmation exactly as ``basic_publish`` does (so aiormq's ack, nack, return and
channel-close handling apply unchanged), then hands the frames of the whole batch to the writer as
one. The next batch waits until that write is done, so a busy publisher's messages go together
and a quiet one's go alone, at once. Channel order is issue order.

A caller's future ends as ``basic_publish`` would: with the broker's ack, or with DeliveryError /
PublishError (nack, unroutable), the channel's close reason or ChannelInvalidStateError. A caller
that stops waiting before its batch is written is not published; after that it is, as with aiormq.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from bus.transport import rabbitmq_frames
from bus.transport.tick_batch import TickBatcher, cancelled_mid_send, fail_all

MAX_BATCH = 256  # messages per write: bounds one frame's size and one burst of marshalling

Item = tuple[str, str, bytes, Basic.Properties, bool, asyncio.Future]


class PublishBatch(TickBatcher):
    """Coalesces concurrent publishes on one (robust) confirm channel (see the module doc)."""

    def __init__(self, channel: AbstractChannel, within: float, max_batch: int = MAX_BATCH):
        super().__init__(max_batch)
        self._channel = channel
        self._within = within
        self._deadlines: deque[tuple[float, asyncio.Future]] = deque()  # in deadline order
        self._timer: asyncio.TimerHandle | None = None
        self.writes = 0  # frames of one or more messages handed to the connection's writer

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        mandatory: bool = True,
        timed: bool = True,
    ) -> asyncio.Future[Any]:
        """Queue one message (``properties.message_id`` set); await the future for its confirm.

        ``timed``: the future fails with TimeoutError once ``within`` seconds have passed, a wait
        for a reconnect included. One timer serves every pending publish (their deadlines come
        in order), where a timeout each would cost a timer each."""
        fut: asyncio.Future[Any] = self._future()
        self._enqueue((exchange, routing_key, body, properties, mandatory, fut))
        if timed:
            self._watch(fut.get_loop(), fut)
        return fut

    def _watch(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        pending = self._deadlines
        while pending and pending[0][1].done():  # settled ones leave once they reach the front
            pending.popleft()
        deadline = loop.time() + self._within  # never earlier than the ones already pending
        pending.append((deadline, fut))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        pending = self._deadlines
        now = asyncio.get_running_loop().time()
        while pending and (pending[0][1].done() or pending[0][0] <= now):
            _, fut = pending.popleft()
            if not fut.done():
                fut.set_exception(TimeoutError(f"no broker confirm within {self._within}s"))
        if pending:
            self._timer = asyncio.get_running_loop().call_at(pending[0][0], self._expire)


    async def _send(self, batch: list[Item]) -> None:
        try:
            channel = await self._channel.get_underlay_channel()
            async with channel.lock:  # raises ChannelInvalidStateError once the channel closed
                drained = await _write(channel, batch)
            if drained is not None:
                self.writes += 1
                await drained  # the next batch gathers while the writer sends this one
        except asyncio.CancelledError:
            closed = aiormq.exceptions.ChannelInvalidStateError(f"{self._channel} closed")
            if cancelled_mid_send(batch, closed):
                raise
        except Exception as exc:  # the channel is gone: every caller not settled shares the error
            fail_all(batch, exc)


async def _write(channel: aiormq.Channel, batch: list[Item]) -> asyncio.Future | None:
    """Register and enqueue ``batch`` as one frame, under the channel lock (as basic_publish)."""
    first = channel.delivery_tag
    frames: list[bytes] = []
    registered: list[tuple[int, str]] = []
    try:
        for exchange, key, body, props, mandatory, fut in batch:
            if fut.done():  # its caller stopped waiting before it was sent: do not send it
                continue
            try:
                frame = rabbitmq_frames.publish(
                    channel.number, exchange, key, mandatory, props, body, channel.max_content_size
                )
            except (TypeError, ValueError) as exc:  # this message cannot be sent: only it fails
                fut.set_exception(exc)
                continue
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirmation = channel.create_future()  # rejected by aiormq if the channel closes
            channel.confirmations[tag] = confirmation
            channel.message_id_delivery_tag[props.message_id] = tag
            registered.append((tag, props.message_id))
            confirmation.add_done_callback(partial(_settle, channel, props.message_id, tag, fut))
            frames.append(frame)
        if not frames:
            return None
        drained = channel.create_future()
        await channel.write_queue.put(
            ChannelFrame(payload=b"".join(frames), should_close=False, drain_future=drained)
        )
        return drained
    except BaseException:  # nothing reached the writer: take the tags back, as basic_publish does
        channel.delivery_tag = first
        for tag, mid in registered:
            confirmation = channel.confirmations.pop(tag, None)
            if confirmation is not None:
                confirmation.cancel()
            if channel.message_id_delivery_tag.get(mid) == tag:
                channel.message_id_delivery_tag.pop(mid)
        raise


def _settle(
    channel: aiormq.Channel, mid: str, tag: int, fut: asyncio.Future, confirmation: asyncio.Future
) -> None:
    """Hand the broker's answer (or the channel's failure) on to the caller's future."""
    if channel.message_id_delivery_tag.get(mid) == tag:
        channel.message_id_delivery_tag.pop(mid)
    if fut.done():  # the caller stopped waiting
        return
    if confirmation.cancelled():
        fut.set_exception(aiormq.exceptions.ChannelInvalidStateError(f"{channel} closed"))
        return
    exc = confirmation.exception()
    if isinstance(exc, asyncio.CancelledError):  # a close reason that is a cancellation
        exc = aiormq.exceptions.ChannelInvalidStateError(f"{channel} closed")
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(confirmation.result())
