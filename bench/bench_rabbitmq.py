"""Throughput of the RabbitMQ transport: publish→consume→complete with one worker.

Run: .venv/bin/python bench/bench_rabbitmq.py [-n 5000] [--publishers 50] [--concurrency 16]
Needs RabbitMQ on 127.0.0.1:5672 and Redis on 127.0.0.1:6379; uses (and then deletes) a
fresh prefix. Prints msgs/s for publishing alone and for publish→complete, with this process's
CPU and Redis's (``INFO cpu``) per message of the publish→complete run.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis

from bus.envelope import Envelope, new_id
from bus.transport.base import Delivery, LedgerEntry, MessageState
from bus.transport.rabbitmq import RabbitTransport

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
BODY = {"call_id": "c-123", "from": "+441234567890", "status": "answered", "duration": 42}


async def publish_all(transport: RabbitTransport, flow: str, total: int, publishers: int) -> None:
    per = total // publishers

    async def one() -> None:
        for _ in range(per):
            await transport.publish([Envelope.new(flow, BODY)])

    await asyncio.gather(*(one() for _ in range(publishers)))


async def _redis_cpu() -> float:
    """Seconds of CPU the Redis server has used (user + system)."""
    redis = Redis.from_url(REDIS_URL)
    try:
        info = await redis.info("cpu")
    finally:
        await redis.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000, help="messages per scenario")
    parser.add_argument("--publishers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    total = args.n - args.n % args.publishers
    transport = RabbitTransport(
        AMQP_URL,
        REDIS_URL,
        prefix=f"bench-{new_id().lower()}",
        backlog_limit=10**7,
        prefetch=args.concurrency,
    )
    await transport.start()
    try:
        start = time.perf_counter()
        await publish_all(transport, "bench-publish", total, args.publishers)
        elapsed = time.perf_counter() - start
        print(
            f"publish, {args.publishers} publishers        {total:>6} msgs {elapsed:6.2f}s "
            f"{total / elapsed:>8.0f} msg/s"
        )

        done = asyncio.Event()
        finished = 0

        async def handler(d: Delivery) -> None:
            nonlocal finished
            e = d.envelope
            await d.complete(
                MessageState.DELIVERED,
                e,
                [LedgerEntry(e.id, "delivered", time.time(), flow=e.flow)],
            )
            finished += 1
            if finished == total:
                done.set()

        transport.consume("bench", handler, concurrency=args.concurrency)
        start, cpu, redis_cpu = time.perf_counter(), time.process_time(), await _redis_cpu()
        await publish_all(transport, "bench", total, args.publishers)
        await done.wait()
        elapsed = time.perf_counter() - start
        cpu, redis_cpu = time.process_time() - cpu, await _redis_cpu() - redis_cpu
        print(
            f"publish→complete, 1 worker ({args.concurrency} conc) {total:>6} msgs "
            f"{elapsed:6.2f}s {total / elapsed:>8.0f} msg/s; CPU µs/msg: this process "
            f"{cpu / total * 1e6:.0f}, Redis {redis_cpu / total * 1e6:.0f}"
        )
    finally:
        await transport.close()
        await transport.drop()


if __name__ == "__main__":
    asyncio.run(main())
