"""Client CPU per pipelined Redis reply: redis-py's ``Connection.read_response`` against the
batch's own reader (``redis_batch._Replies``), on one connection to the machine's Redis.

Run: .venv/bin/python bench/redis_replies.py [--rounds 5] [-n 20000] [--pipeline 16]
Each round writes ``-n`` GETs of a missing key in pipelines of ``--pipeline`` and reads their
replies one way, then the other (alternated); prints µs of this process's CPU per reply (send
included). Needs Redis on 127.0.0.1:6379. Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import hiredis
from redis.asyncio import Redis

from bus.transport.redis_batch import _Replies

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _run(conn, n: int, pipeline: int, direct: bool) -> float:
    packed = b"".join(hiredis.pack_command(("GET", "tieline-bench-missing")) for _ in range(pipeline))
    started = time.process_time()
    for _ in range(n // pipeline):
        await conn.send_packed_command(packed, check_health=False)
        if direct:
            replies = _Replies(conn)
            for _ in range(pipeline):
                await replies.next()
        else:
            for _ in range(pipeline):
                await conn.read_response()
    return (time.process_time() - started) / (n // pipeline * pipeline) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=20000, help="replies per run")
    parser.add_argument("--pipeline", type=int, default=16, help="commands per write")
    args = parser.parse_args()
    redis = Redis.from_url(REDIS_URL)
    conn = await redis.connection_pool.get_connection()
    try:
        await _run(conn, 2000, args.pipeline, True)  # warm-up
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(await _run(conn, args.n, args.pipeline, False))
            ours.append(await _run(conn, args.n, args.pipeline, True))
    finally:
        await redis.connection_pool.release(conn)
        await redis.aclose()
    for label, runs in (("Connection.read_response", theirs), ("redis_batch._Replies", ours)):
        runs_text = ", ".join(f"{r:.1f}" for r in runs)
        print(f"{label:26} median {sorted(runs)[len(runs) // 2]:5.1f} µs/reply  (runs {runs_text})")


if __name__ == "__main__":
    asyncio.run(main())
