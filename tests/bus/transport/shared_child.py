"""Helper for the lease tests: a process sharing the file that claims messages and never ends them.

Usage: python shared_child.py DB_PATH LEASE_SECONDS. Prints ``claimed <id>`` for each message
it takes (then holds it forever); the test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bus.transport.sqlite import SqliteTransport


async def main(path: Path, lease: float) -> None:
    transport = SqliteTransport(path, shared=True, lease=lease)

    async def hold(delivery) -> None:  # noqa: ANN001 - a Delivery
        sys.stdout.write(f"claimed {delivery.envelope.id}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    transport.consume("held", hold, concurrency=1)
    await transport.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2])))
