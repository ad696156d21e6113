"""A delivery taken off aiormq's channel: what it reads and how it is settled."""

from __future__ import annotations

import pytest
from aio_pika.exceptions import MessageProcessError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bus.transport.rabbitmq_inbound import Inbound


class _Channel:
    """Records what is sent for a delivery tag, as the broker would see it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool | None]] = []

    async def basic_ack(self, tag: int) -> None:
        self.sent.append(("ack", tag, None))

    async def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.sent.append(("nack", tag, requeue))

    async def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.sent.append(("reject", tag, requeue))


def _delivered(channel: _Channel, tag: int) -> DeliveredMessage:
    props = Basic.Properties(message_id="m-1", headers={"x-tieline-gen": 2})
    return DeliveredMessage(
        delivery=Basic.Deliver(consumer_tag="c", delivery_tag=tag, routing_key="r"),
        header=ContentHeader(body_size=4, properties=props),
        body=b"body",
        channel=channel,  # type: ignore[arg-type]
    )


async def test_it_reads_body_headers_and_id_and_settles_on_its_own_tag() -> None:
    channel = _Channel()
    message = Inbound(_delivered(channel, 7))
    assert (message.body, message.message_id, message.headers) == (
        b"body",
        "m-1",
        {"x-tieline-gen": 2},
    )
    await message.nack(requeue=True)
    await Inbound(_delivered(channel, 8)).reject(requeue=False)
    await Inbound(_delivered(channel, 9)).ack()
    assert channel.sent == [("nack", 7, True), ("reject", 8, False), ("ack", 9, None)]


@pytest.mark.parametrize("second", ["ack", "nack", "reject"])
async def test_a_second_settlement_raises_and_sends_nothing(second: str) -> None:
    """A second ack of one tag would be a channel error closing every delivery on it."""
    channel = _Channel()
    message = Inbound(_delivered(channel, 3))
    await message.ack()
    with pytest.raises(MessageProcessError):
        await getattr(message, second)()
    assert channel.sent == [("ack", 3, None)]
