"""What each retained message costs in storage: Redis memory (RabbitMQ transport) and SQLite
file size (embedded), per delivered message, for sizing the retention (``ledger_ttl`` /
``retention``, 7 days by default: 600 M messages at 1,000 msg/s).

N messages (the e2e bench's order body, one ledger line received + one delivered) are
published and completed through the transport; the store's growth is divided by N.
Redis: ``used_memory`` from INFO before and after (the machine's Redis: other users' keys
count too, so run it on a quiet one). Prints only.

Run: .venv/bin/python bench/retention_size.py [-n 20000] [--body-bytes N] [embedded] [rabbitmq]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import common as c
import orjson
from redis.asyncio import Redis

from bus.envelope import Envelope, new_id
from bus.transport.base import LedgerEntry, MessageState
from bus.transport.sqlite import SqliteTransport

REDIS_URL = "redis://127.0.0.1:6379/0"


async def fill(transport, n: int, size: int = 0) -> None:  # noqa: ANN001
    done, count = asyncio.Event(), [0]

    async def deliver(d) -> None:  # noqa: ANN001
        env = d.envelope
        await d.complete(MessageState.DELIVERED, env,
                         [LedgerEntry(env.id, "delivered", time.time(), flow=env.flow)])
        count[0] += 1
        if count[0] == n:
            done.set()

    transport.consume("orders", deliver, concurrency=32)
    for i in range(0, n, 100):
        await transport.publish([
            Envelope.new("orders", orjson.loads(c.order(f"o{i + j}", size=size)), {"source": "vendor"})
            for j in range(min(100, n - i))
        ])
    await asyncio.wait_for(done.wait(), 600)
    await asyncio.sleep(0.5)


async def embedded(n: int, size: int = 0) -> None:
    path = Path(tempfile.mkdtemp(prefix="retention-")) / "bus.sqlite3"
    transport = SqliteTransport(path)
    await transport.start()
    try:
        await fill(transport, n, size)
    finally:
        await transport.close()
    stored = sum(os.path.getsize(p) for p in path.parent.glob("bus.sqlite3*"))
    print(f"embedded: {n} delivered messages of {len(c.order('o1', size=size)):,}-byte bodies, "
          f"file {stored / 2**20:.1f} MiB, {stored / n:.0f} bytes per message", flush=True)


async def rabbitmq(n: int, size: int = 0) -> None:
    from bus.transport.rabbitmq import RabbitTransport

    redis = Redis.from_url(REDIS_URL)
    before = (await redis.info("memory"))["used_memory"]
    transport = RabbitTransport("amqp://guest:guest@127.0.0.1:5672/", REDIS_URL,
                                prefix=f"bench-size-{new_id().lower()}", flows=["orders"])
    await transport.start()
    try:
        await fill(transport, n, size)
        after = (await redis.info("memory"))["used_memory"]
        print(f"rabbitmq: {n} delivered messages of {len(c.order('o1', size=size)):,}-byte "
              f"bodies, Redis +{(after - before) / 2**20:.1f} MiB, "
              f"{(after - before) / n:.0f} bytes per message", flush=True)
    finally:
        await transport.close()
        await transport.drop()
        await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("engines", nargs="*", default=["embedded", "rabbitmq"])
    ap.add_argument("--body-bytes", type=int, default=0,
                    help="pad each order with a call transcript to this many bytes")
    args = ap.parse_args()
    for engine in args.engines:
        asyncio.run({"embedded": embedded, "rabbitmq": rabbitmq}[engine](args.n, args.body_bytes))


if __name__ == "__main__":
    main()
