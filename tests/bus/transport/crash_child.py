"""Helper for the crash test: publish forever, printing each id only after publish() returned.

Usage: python crash_child.py DB_PATH PUBLISHERS. The test SIGKILLs it; every id printed was
acknowledged, so it must be in the file afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bus.envelope import Envelope
from bus.transport.sqlite import SqliteTransport


async def publisher(transport: SqliteTransport) -> None:
    while True:
        env = Envelope.new("crash", {"payload": "x" * 64})
        await transport.publish([env])
        sys.stdout.write(env.id + "\n")
        sys.stdout.flush()


async def main(path: Path, publishers: int) -> None:
    transport = SqliteTransport(path, backlog_limit=10**9)
    await transport.start()
    await asyncio.gather(*(publisher(transport) for _ in range(publishers)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
