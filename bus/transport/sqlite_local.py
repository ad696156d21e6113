"""The order of work when one process has the embedded file to itself.

The process knows every message there is, so the order of work lives in memory: one FlowQueue
per flow (ready messages and a timer heap; past its window, message ids read back from the
file in batches), loaded from SQLite at start and fed after each commit, and exact backlog
counters. No lease is written: nobody else could take a message.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog

from bus.envelope import Envelope
from bus.errors import BackpressureError
from bus.transport import sqlite_ops as ops
from bus.transport import sqlite_store as store
from bus.transport.base import Handler
from bus.transport.sqlite_scheduler import FlowQueue

if TYPE_CHECKING:
    from bus.transport.sqlite import SqliteTransport

log = structlog.get_logger("tieline.transport")


class LocalQueues:
    """In-memory queues and backlog of a process alone on its file (``owner`` None: no leases)."""

    owner: str | None = None
    shared = False

    def __init__(self, transport: SqliteTransport, clock: Callable[[], float], poll: float):
        self._t = transport
        self._clock = clock
        self._poll = poll
        self._queues: dict[str, FlowQueue] = {}
        self._consumers: dict[str, tuple[Handler, int]] = {}
        self._dispatchers: list[asyncio.Task[None]] = []
        self._backlog: Counter[str] = Counter()
        self._reserved = 0  # envelopes of publishes still waiting for their commit
        self._running = False

    async def start(self) -> None:
        """Load every queued message; leases left by processes that shared the file are void."""
        now = self._clock()
        await self._t.writer.call(ops.clear_leases, (now,))
        for flow, (ids, available) in (await self._t.reader.read(store.load_queued)).items():
            self._backlog[flow] += len(ids)
            queue = self._queue(flow)
            for message_id, available_at in zip(ids, available, strict=True):
                queue.put_id(message_id, available_at)
        self._running = True
        for flow in self._consumers:
            self._spawn(flow)

    async def stop(self) -> None:
        self._running = False
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)

    async def release_held(self) -> None:
        """Nothing to give back: messages cut off by close() are queued and load at the next start."""

    # ----- producing --------------------------------------------------------------------
    @contextmanager
    def reserving(self, count: int):  # noqa: ANN201 - a context manager
        """Room for ``count`` envelopes under the bound, held until their commit returns."""
        backlog = self._backlog.total() + self._reserved
        if backlog + count > self._t.backlog_limit:
            raise BackpressureError(
                f"embedded transport {self._t.path}: backlog is {backlog} messages, the bound is "
                f"{self._t.backlog_limit}; retry later, or raise the transport's backlog_limit",
                retry_after=1.0,
            )
        self._reserved += count
        try:
            yield
        finally:
            self._reserved -= count

    def enqueue(self, envelope: Envelope, available_at: float, *, new: bool = True,
                size: int | None = None) -> None:
        """Hand a committed queued message to its flow's scheduler (``new``: count it in the
        backlog; ``size``: bytes of its stored JSON, if known)."""
        if new:
            self._backlog[envelope.flow] += 1
        self._queue(envelope.flow).put(envelope, available_at, size)

    def settled(self, flow: str) -> None:
        """A message of ``flow`` reached a terminal state."""
        self._backlog[flow] -= 1

    async def backlog(self, flow: str | None = None) -> int:
        return self._backlog.total() if flow is None else self._backlog[flow]

    def _queue(self, flow: str) -> FlowQueue:
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = FlowQueue(self._clock, self._poll, self._read_back,
                                                   lost=lambda message_id: self._lost(flow, message_id))
        return queue

    async def _read_back(self, message_ids: Sequence[str]) -> dict[str, tuple[Envelope, int]]:
        return await self._t.reader.read(store.load_envelopes, message_ids)

    def _lost(self, flow: str, message_id: str) -> None:
        """A message queued by id was not queued in the file when read back. Only another
        program writing the file does that; it no longer counts in the backlog."""
        self._backlog[flow] -= 1
        log.warning("queued_message_missing", flow=flow, message_id=message_id)

    # ----- consuming --------------------------------------------------------------------
    def consume(self, flow: str, handler: Handler, concurrency: int) -> None:
        self._consumers[flow] = (handler, concurrency)
        if self._running:
            self._spawn(flow)

    def _spawn(self, flow: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._dispatch(flow), name=f"tieline-dispatch-{flow}"
        )
        self._dispatchers.append(task)

    async def _dispatch(self, flow: str) -> None:
        handler, concurrency = self._consumers[flow]
        slots = asyncio.Semaphore(concurrency)
        queue = self._queue(flow)
        while True:
            await slots.acquire()
            envelope = await queue.get()
            self._t.start_delivery(handler, envelope, lambda _task: slots.release())
