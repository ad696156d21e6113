"""The two peers of bench/distributed.py: consume → 8-field mapping → confirmed publish → ack.

Run: .venv/bin/python bench/distributed_peers.py {handwritten|faststream} AMQP_URL IN_QUEUE OUT_QUEUE
[--prefetch 16]. Both consume ``IN_QUEUE`` (JSON bodies, a ``source`` AMQP header) until
SIGTERM, apply the mapping of bench/bench_mapping.py to ``{body, headers, context}`` and publish
the result, persistent and with publisher confirms, to ``OUT_QUEUE`` (default exchange) before
acking. The queues are declared (durable) and deleted by bench/distributed.py, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import orjson

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_mapping import SPEC  # noqa: E402 - the same 8-field mapping as the mapping bench

from bus.functions import TielineFunctions  # noqa: E402
from bus.mapping import compile_mapping  # noqa: E402

MAPPING = compile_mapping("bench", SPEC, TielineFunctions())


def view(body: bytes, headers: dict) -> dict:
    """What a tieline mapping sees: body, headers (str values), context."""
    return {"body": orjson.loads(body),
            "headers": {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in headers.items()},
            "context": {}}


async def until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def handwritten(url: str, in_queue: str, out_queue: str, prefetch: int) -> None:
    """The limit: plain aio-pika, one connection, a consume channel and a confirm channel."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        consume_ch = await connection.channel()
        await consume_ch.set_qos(prefetch_count=prefetch)
        publish_ch = await connection.channel(publisher_confirms=True)
        exchange = publish_ch.default_exchange
        queue = await consume_ch.get_queue(in_queue, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            result = MAPPING.apply(view(message.body, message.headers or {}))
            await exchange.publish(  # returns once the broker confirmed it
                aio_pika.Message(orjson.dumps(result), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 content_type="application/json"),
                routing_key=out_queue, mandatory=True)
            await message.ack()

        await queue.consume(on_message)
        await until_signal()


async def faststream(url: str, in_queue: str, out_queue: str, prefetch: int) -> None:
    """FastStream 0.7: a subscriber whose return value a publisher sends on, then the ack."""
    from faststream.middlewares import AckPolicy
    from faststream.rabbit import RabbitBroker, RabbitMessage, RabbitQueue
    from faststream.rabbit.schemas import Channel

    broker = RabbitBroker(url, default_channel=Channel(prefetch_count=prefetch, publisher_confirms=True),
                          logger=None)  # no per-message log lines
    publisher = broker.publisher(RabbitQueue(out_queue, durable=True), persist=True)

    @publisher
    @broker.subscriber(RabbitQueue(in_queue, durable=True), ack_policy=AckPolicy.ACK,
                       no_reply=True)
    async def handle(msg: RabbitMessage) -> bytes:
        return orjson.dumps(MAPPING.apply(view(msg.body, msg.headers or {})))

    async with broker:
        await broker.start()
        await until_signal()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer", choices=["handwritten", "faststream"])
    parser.add_argument("url")
    parser.add_argument("in_queue")
    parser.add_argument("out_queue")
    parser.add_argument("--prefetch", type=int, default=16)
    a = parser.parse_args()
    run = handwritten if a.peer == "handwritten" else faststream
    import uvloop  # same loop as `tieline worker`

    uvloop.run(run(a.url, a.in_queue, a.out_queue, a.prefetch))


if __name__ == "__main__":
    main()
