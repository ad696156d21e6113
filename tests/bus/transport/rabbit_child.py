"""Worker child for the SIGKILL test: does the 'to:' call, checkpoints, then hangs until killed.

Usage: python rabbit_child.py AMQP_URL REDIS_URL PREFIX FLOW. The 'to:' call is an INCR of
``{prefix}:calls:{message id}`` in Redis; "checkpointed <id>" is printed once the checkpoint
is durable, then the handler sleeps forever with the delivery unacked.
"""

from __future__ import annotations

import asyncio
import sys

from redis.asyncio import Redis

from bus.transport.base import Delivery
from bus.transport.rabbitmq import RabbitTransport


async def main(amqp_url: str, redis_url: str, prefix: str, flow: str) -> None:
    redis = Redis.from_url(redis_url)
    transport = RabbitTransport(amqp_url, redis_url, prefix=prefix, flows=[flow])

    async def handler(delivery: Delivery) -> None:
        env = delivery.envelope
        await redis.incr(f"{prefix}:calls:{env.id}")  # the simulated to: call
        await delivery.checkpoint(env.evolve(cursor=1, context={"ticket": {"id": 7}}))
        sys.stdout.write(f"checkpointed {env.id}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()  # hang: the test kills us here

    transport.consume(flow, handler, concurrency=1)
    await transport.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
