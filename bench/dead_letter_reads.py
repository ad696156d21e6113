"""What a metrics scrape pays per flow for its dead-letter depth and age, with N dead letters:
reading every letter (``dead_letters``, what /metrics and the dashboard did) against
``dead_letter_summary`` (an index count), on the embedded transport and on RabbitMQ.

Run: .venv/bin/python bench/dead_letter_reads.py [-n 5000] [embedded] [rabbitmq]
(rabbitmq needs the machine's RabbitMQ and Redis; its prefix is deleted afterwards). Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bus.envelope import Envelope, new_id
from bus.transport.base import Transport
from bus.transport.sqlite import SqliteTransport


def build(engine: str, where: Path) -> Transport:
    if engine == "embedded":
        return SqliteTransport(where / "bus.sqlite3")
    from bus.transport.rabbitmq import RabbitTransport

    return RabbitTransport("amqp://guest:guest@127.0.0.1:5672/", "redis://127.0.0.1:6379/0",
                           prefix=f"bench-dlq-{new_id().lower()}", flows=["dl"])


async def run(engine: str, n: int) -> None:
    transport = build(engine, Path(tempfile.mkdtemp(prefix="dlq-reads-")))
    await transport.start()
    try:
        done, count = asyncio.Event(), [0]

        async def die(delivery) -> None:  # noqa: ANN001
            await delivery.dead(delivery.envelope, "boom", ["boom"])
            count[0] += 1
            if count[0] == n:
                done.set()

        transport.consume("dl", die, concurrency=32)
        for at in range(0, n, 100):
            await transport.publish([Envelope.new("dl", {"i": i}) for i in range(min(100, n - at))])
        await asyncio.wait_for(done.wait(), 600)
        await asyncio.sleep(0.5)  # the last endings' writes
        start = time.perf_counter()
        letters = await transport.dead_letters(flow="dl", limit=1_000_000)
        every = time.perf_counter() - start
        start = time.perf_counter()
        depth, _ = await transport.dead_letter_summary("dl")
        summary = time.perf_counter() - start
        print(f"{engine}: {len(letters)} dead letters; reading every letter {every * 1000:.0f} ms; "
              f"dead_letter_summary {summary * 1000:.1f} ms ({depth})", flush=True)
    finally:
        await transport.close()
        if engine == "rabbitmq":
            await transport.drop()  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("engines", nargs="*", default=["embedded", "rabbitmq"])
    args = ap.parse_args()
    for engine in args.engines:
        asyncio.run(run(engine, args.n))


if __name__ == "__main__":
    main()
