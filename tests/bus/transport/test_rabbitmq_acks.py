"""AckBatch (group acking): the frame bytes, one write for a tick's acks, a closed channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest
from pamqp import frame as pamqp_frame
from pamqp.commands import Basic

from bus.envelope import new_id
from bus.transport.rabbitmq_acks import AckBatch, ack_frame

from .conftest import AMQP_URL


@pytest.mark.parametrize(("channel", "tag"), [(1, 1), (7, 300), (65535, 2**63 - 1)])
def test_ack_frame_is_what_pamqp_marshals(channel: int, tag: int) -> None:
    assert ack_frame(channel, tag) == pamqp_frame.marshal(Basic.Ack(delivery_tag=tag), channel)


@pytest.fixture
async def consumed() -> AsyncIterator[tuple[aiormq.Channel, str, list]]:
    """An exclusive queue holding 20 messages, consumed (unacked) on an aiormq channel."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)
    queue = await channel.declare_queue(f"test-acks-{new_id().lower()}", exclusive=True)
    for i in range(20):
        await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), queue.name)
    underlay = await channel.get_underlay_channel()
    got: list = []

    async def on_message(delivered: aiormq.abc.DeliveredMessage) -> None:
        got.append(delivered)

    await underlay.basic_consume(queue.name, on_message)
    for _ in range(200):
        if len(got) == 20:
            break
        await asyncio.sleep(0.01)
    assert len(got) == 20
    yield underlay, queue.name, got
    await connection.close()


async def test_a_ticks_acks_go_in_one_write_and_the_broker_takes_them(consumed) -> None:
    underlay, queue, got = consumed
    batch = AckBatch()
    await asyncio.gather(*(batch.ack(d.channel, d.delivery.delivery_tag) for d in got[:15]))
    assert batch.writes == 1
    # the broker counts the acked ones gone: a recover hands out again only the other 5
    await underlay.basic_recover(requeue=True)
    for _ in range(200):
        if len(got) >= 25:
            break
        await asyncio.sleep(0.01)
    redelivered = [d.body for d in got[20:]]
    assert sorted(redelivered) == sorted(d.body for d in got[15:20])


async def test_an_ack_on_a_closed_channel_fails_as_basic_acks_does(consumed) -> None:
    underlay, _, got = consumed
    await underlay.close()
    batch = AckBatch()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await batch.ack(got[0].channel, got[0].delivery.delivery_tag)
    assert batch.writes == 0
