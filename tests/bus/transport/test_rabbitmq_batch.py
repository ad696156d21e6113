"""PublishBatch (group publishing on a confirm channel): confirms, give-ups, deadlines, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest
from pamqp.commands import Basic

from bus.envelope import new_id
from bus.transport.rabbitmq_batch import PublishBatch

from .conftest import AMQP_URL


def _props(mid: str) -> Basic.Properties:
    return Basic.Properties(message_id=mid, delivery_mode=2)


@pytest.fixture
async def confirm() -> AsyncIterator[
    tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractQueue]
]:
    """A confirm channel on its own connection and an exclusive queue (gone with the connection)."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    queue = await channel.declare_queue(f"test-batch-{new_id().lower()}", exclusive=True)
    yield channel, queue
    await connection.close()


async def test_each_publish_gets_its_confirm_in_order(confirm) -> None:
    """Publishes issued in one tick go in one write; each future ends with the broker's ack."""
    channel, queue = confirm
    batch = PublishBatch(channel, within=5.0)
    futs = [batch.publish("", queue.name, str(i).encode(), _props(f"m{i}")) for i in range(20)]
    acks = await asyncio.gather(*futs)
    assert all(isinstance(a, Basic.Ack) for a in acks)
    assert batch.writes == 1
    got = [await queue.get(no_ack=True) for _ in range(20)]
    assert [m.body for m in got if m] == [str(i).encode() for i in range(20)]


async def test_caller_gone_before_the_write_is_not_published(confirm) -> None:
    """A publish whose caller stopped waiting before its batch was written is not sent."""
    channel, queue = confirm
    batch = PublishBatch(channel, within=5.0)
    gone = batch.publish("", queue.name, b"gone", _props("m-gone"))
    gone.cancel()
    await batch.publish("", queue.name, b"kept", _props("m-kept"))
    first = await queue.get(no_ack=True)
    assert first is not None and first.body == b"kept"
    assert await queue.get(no_ack=True, fail=False) is None


async def test_unroutable_publish_fails_with_the_brokers_return(confirm) -> None:
    """A mandatory publish no queue takes fails as basic_publish would (PublishError)."""
    channel, _ = confirm
    batch = PublishBatch(channel, within=5.0)
    with pytest.raises(aiormq.exceptions.PublishError):
        await batch.publish("", f"no-such-queue-{new_id().lower()}", b"x", _props("m-lost"))


async def test_closed_channel_fails_the_publish(confirm) -> None:
    """On a closed channel the future fails with an outage error (the publisher retries it)."""
    channel, queue = confirm
    await channel.close()
    batch = PublishBatch(channel, within=5.0)
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await batch.publish("", queue.name, b"x", _props("m-closed"))


class _Stuck:
    """A channel whose connection never comes back until ``free()``: nothing is ever written."""

    def __init__(self) -> None:
        self._back = asyncio.Event()

    async def get_underlay_channel(self):
        await self._back.wait()
        raise aiormq.exceptions.ChannelInvalidStateError("closed for good")

    def free(self) -> None:
        self._back.set()


async def test_publish_not_confirmed_within_its_time_fails() -> None:
    """With the broker unreachable, a timed publish fails with TimeoutError after ``within``;
    an untimed one waits (its caller's own timeout decides)."""
    stuck = _Stuck()
    batch = PublishBatch(stuck, within=0.05)  # type: ignore[arg-type]
    timed = batch.publish("ex", "key", b"x", _props("m-timed"))
    untimed = batch.publish("ex", "key", b"y", _props("m-untimed"), timed=False)
    with pytest.raises(TimeoutError):
        await timed
    assert not untimed.done()
    stuck.free()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await untimed


async def test_a_message_that_cannot_be_encoded_fails_alone(confirm) -> None:
    """A routing key AMQP cannot carry (over 255 bytes) fails its own publish, not its batch's."""
    channel, queue = confirm
    batch = PublishBatch(channel, within=5.0)
    bad = batch.publish("", "k" * 256, b"bad", _props("m-bad"))
    good = batch.publish("", queue.name, b"good", _props("m-good"))
    assert isinstance(await good, Basic.Ack)
    with pytest.raises(TypeError):
        await bad
