"""Throughput of the embedded transport: publish with 1 and 50 publishers, publish→complete.

Run: .venv/bin/python bench/bench_sqlite_transport.py [--sync full|normal] [-n 10000]
Prints one line per scenario: messages/s and the group-commit factor (jobs per commit).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bus.envelope import Envelope
from bus.transport.base import Delivery, LedgerEntry, MessageState
from bus.transport.sqlite import SqliteTransport

BODY = {"call_id": "c-123", "from": "+441234567890", "status": "answered", "duration": 42}


async def publish_all(transport: SqliteTransport, total: int, publishers: int) -> None:
    per = total // publishers

    async def one() -> None:
        for _ in range(per):
            await transport.publish([Envelope.new("bench", BODY)])

    await asyncio.gather(*(one() for _ in range(publishers)))


async def scenario(name: str, sync: str, total: int, publishers: int, consume: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        transport = SqliteTransport(Path(tmp) / "bench.sqlite3", sync=sync, backlog_limit=10**7)
        await transport.start()
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

        if consume:
            transport.consume("bench", handler, concurrency=16)
        commits, jobs = transport.stats["commits"], transport.stats["jobs"]
        start = time.perf_counter()
        await publish_all(transport, total, publishers)
        if consume:
            await done.wait()
        elapsed = time.perf_counter() - start
        commits = transport.stats["commits"] - commits
        jobs = transport.stats["jobs"] - jobs
        await transport.close()
    print(
        f"{name:<34} sync={sync:<6} {total:>6} msgs {elapsed:6.2f}s "
        f"{total / elapsed:>8.0f} msg/s  {jobs / max(commits, 1):5.1f} jobs/commit"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sync", choices=["full", "normal"], default="full")
    parser.add_argument("-n", type=int, default=10_000, help="messages per scenario")
    args = parser.parse_args()
    await scenario("publish, 1 publisher", args.sync, args.n // 5, 1, consume=False)
    await scenario("publish, 50 publishers", args.sync, args.n, 50, consume=False)
    await scenario("publish→complete, 50 pub, 16 cons", args.sync, args.n, 50, consume=True)


if __name__ == "__main__":
    asyncio.run(main())
