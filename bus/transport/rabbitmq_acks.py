"""Group acking: acks issued while a write is in flight share the next one.

aiormq's ``basic_ack`` hands every ack to the connection's writer as a frame of its own, and the
writer sends each as its own socket write: a 21-byte write per message, two thirds of a busy
worker's writes to the broker (strace of the distributed benchmark, bench/RESULTS.md, session
15). Here an ack queues (channel, delivery tag) and gets a future; one drain task takes what is
queued and hands the ack frames of each channel to the writer as one payload, then settles the
futures once the writer has sent it, as ``basic_ack`` waits for its drain.

An ack on a closed channel fails with ChannelInvalidStateError, as ``basic_ack``'s does; the
broker then redelivers the message, which ``admit`` drops by its generation.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame

from bus.transport.tick_batch import TickBatcher, cancelled_mid_send, fail_all

MAX_BATCH = 512  # acks per write: 21 bytes each

# frame type 1 (method), channel, payload size 13: class 60 (basic), method 80 (ack), the
# delivery tag, the bits (multiple = 0); then the frame end octet
_ACK = struct.Struct(">BHIHHQB")
_FRAME_END = b"\xce"


def ack_frame(channel: int, tag: int) -> bytes:
    """The wire bytes of ``basic.ack(tag, multiple=False)`` on ``channel``."""
    return _ACK.pack(1, channel, 13, 60, 80, tag, 0) + _FRAME_END


Item = tuple[aiormq.Channel, int, asyncio.Future]


class AckBatch(TickBatcher):
    """Coalesces the acks of concurrent deliveries into one write per channel."""

    def __init__(self, max_batch: int = MAX_BATCH):
        super().__init__(max_batch)
        self.writes = 0  # payloads handed to a connection's writer

    def ack(self, channel: aiormq.Channel, tag: int) -> asyncio.Future[Any]:
        """Queue the ack of ``tag`` (a delivery on ``channel``); await the future for its write."""
        fut: asyncio.Future[Any] = self._future()
        self._enqueue((channel, tag, fut))
        return fut

    async def _send(self, batch: list[Item]) -> None:
        by_channel: dict[aiormq.Channel, list[Item]] = {}
        for item in batch:
            by_channel.setdefault(item[0], []).append(item)
        for channel, items in by_channel.items():
            await self._write(channel, items)

    async def _write(self, channel: aiormq.Channel, items: list[Item]) -> None:
        try:
            if channel.is_closed:  # as basic_ack: a tag of a closed channel means nothing now
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            number = channel.number
            payload = b"".join([ack_frame(number, tag) for _, tag, _ in items])
            drained = channel.create_future()  # failed by aiormq if the channel closes
            await channel.write_queue.put(
                ChannelFrame(payload=payload, should_close=False, drain_future=drained)
            )
            self.writes += 1
            await drained
        except asyncio.CancelledError:
            closed = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            if cancelled_mid_send(items, closed):
                raise
        except Exception as exc:
            fail_all(items, exc)
        else:
            for *_, fut in items:
                if not fut.done():
                    fut.set_result(None)
