"""Fixtures for the transport contract suite: one started transport per engine.

To run the suite against another engine, add its name to ENGINES and a branch to ``_build``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.envelope import Envelope, new_id
from bus.transport.base import Delivery, LedgerEntry, MessageState, Transport
from bus.transport.sqlite import SqliteTransport

ENGINES = ["embedded", "embedded-shared", "rabbitmq"]
AMQP_URL = os.environ.get("TIELINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("TIELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

MakeTransport = Callable[..., Awaitable[Transport]]


def _build(engine: str, where: Path, **options: Any) -> Transport:
    """A new, not yet started transport of ``engine``; ``options``: backlog_limit, dedupe_window."""
    if engine == "embedded":
        return SqliteTransport(where / "bus.sqlite3", poll_interval=0.01, **options)
    if engine == "embedded-shared":  # the same file, opened to share with other processes
        return SqliteTransport(where / "bus.sqlite3", shared=True, **options)
    if engine == "rabbitmq":
        from bus.transport.rabbitmq import RabbitTransport

        prefix = f"test-{new_id().lower()}"  # unique per transport: teardown removes only these
        return RabbitTransport(AMQP_URL, REDIS_URL, prefix=prefix, **options)
    raise AssertionError(f"unknown engine {engine!r}: add it to conftest._build")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def make_transport(engine: str, tmp_path: Path) -> AsyncIterator[MakeTransport]:
    """Builds and starts transports (each on its own store); closes them after the test."""
    made: list[Transport] = []

    async def make(**options: Any) -> Transport:
        where = tmp_path / f"t{len(made)}"
        where.mkdir()
        transport = _build(engine, where, **options)
        await transport.start()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close(timeout=1.0)
        if engine == "rabbitmq":
            await remove_rabbit(transport)


async def remove_rabbit(transport: Any) -> None:
    """Delete the exchanges, queues and Redis keys of one RabbitTransport's prefix, nothing else."""
    await transport.drop()


@pytest.fixture
async def transport(make_transport: MakeTransport) -> Transport:
    return await make_transport()


class Recorder:
    """A consumer: runs ``act`` on each delivery, then records the envelope it was handed."""

    def __init__(self, act: Callable[[Delivery], Awaitable[None]]):
        self.act = act
        self.seen: asyncio.Queue[Envelope] = asyncio.Queue()

    async def __call__(self, delivery: Delivery) -> None:
        try:
            await self.act(delivery)
        finally:
            self.seen.put_nowait(delivery.envelope)

    async def next(self) -> Envelope:
        """The next envelope handled (the timeout only keeps a broken engine from hanging the run)."""
        return await asyncio.wait_for(self.seen.get(), 10)

    async def take(self, n: int) -> list[Envelope]:
        return [await self.next() for _ in range(n)]


async def complete(delivery: Delivery) -> None:
    """The happy handler: end as delivered, with its ledger line."""
    env = delivery.envelope
    await delivery.complete(
        MessageState.DELIVERED, env, [LedgerEntry(env.id, "delivered", time.time(), flow=env.flow)]
    )
