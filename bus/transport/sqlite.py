"""The embedded transport: asyncio in-process, durable in one SQLite file (WAL, group commit).

SQLite holds the truth (messages, ledger, dead letters, dedupe keys); memory holds only the
order of work (one FlowQueue per flow) and backlog counters. Every write returns after
COMMIT; memory is updated only after that, so a crash loses nothing acknowledged, and on
start() every queued message — including those a killed process had in flight — runs again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from bus.envelope import Envelope
from bus.errors import BackpressureError, TransportError
from bus.transport import sqlite_store as store
from bus.transport.base import (
    DeadLetter,
    Handler,
    LedgerEntry,
    MessageRecord,
    MessageState,
    PublishResult,
    Transport,
    run_handler,
)
from bus.transport.entries import received_entry
from bus.transport.sqlite_delivery import SqliteDelivery
from bus.transport.sqlite_scheduler import FlowQueue
from bus.transport.sqlite_writer import Connect, GroupCommitWriter, Reader, Sync

log = structlog.get_logger()

CRASH_RETRY_DELAY = 1.0  # seconds before a message whose handler raised runs again
DEDUPE_EXPIRY_EVERY = 60.0  # purge expired dedupe keys at most this often


class SqliteTransport(Transport):
    """Durable queue per flow, ledger, dead letters and inbound dedupe in one SQLite file.

    ``connect`` (tests, tooling) builds each sqlite3 connection instead of ``sqlite3.connect``.
    ``stats`` counts commits and write jobs: jobs/commits is the group-commit factor.
    """

    def __init__(
        self,
        path: Path,
        *,
        backlog_limit: int = 100_000,
        dedupe_window: float = 7 * 86400,
        retention: float = 7 * 86400,
        sync: Sync = "full",
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.05,
        connect: Connect | None = None,
    ):
        if sync not in ("full", "normal"):
            raise ValueError(f"SqliteTransport: sync={sync!r} is not 'full' or 'normal'")
        self.path = Path(path)
        self.clock = clock
        self._limit = backlog_limit
        self._dedupe_window = dedupe_window
        self._retention = retention
        self._poll = poll_interval
        self.writer = GroupCommitWriter(self.path, connect, sync)
        self._reader = Reader(self.path, connect, sync)
        self.stats = self.writer.stats
        self._queues: dict[str, FlowQueue] = {}
        self._consumers: dict[str, tuple[Handler, int]] = {}
        self._dispatchers: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._backlog: Counter[str] = Counter()
        self._reserved = 0  # envelopes of publishes still waiting for their commit
        self._dedupe_expired_at = float("-inf")  # touched on the writer thread only
        self._state = "new"

    # ----- life -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state != "new":
            raise TransportError(f"embedded transport {self.path}: start() called twice")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.writer.start(store.create_schema)
        await self._reader.start()
        for envelope, available_at in await self._reader.read(store.load_queued):
            self.enqueue(envelope, available_at)
        self._state = "running"
        for flow in self._consumers:
            self._spawn_dispatcher(flow)

    async def close(self, timeout: float = 10.0) -> None:
        if self._state != "running":
            return
        self._state = "closing"
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            for task in pending:  # their messages stay queued in SQLite and run after restart
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.writer.close()
        await self._reader.close()
        self._state = "closed"

    # ----- producing --------------------------------------------------------------------
    async def publish(
        self,
        envelopes: Sequence[Envelope],
        *,
        dedupe_key: str | None = None,
        delay: float = 0.0,
        entries: Sequence[LedgerEntry] = (),
    ) -> PublishResult:
        envs = list(envelopes)
        backlog = self._backlog.total() + self._reserved
        if backlog + len(envs) > self._limit:
            raise BackpressureError(
                f"embedded transport {self.path}: backlog is {backlog} messages, the bound is "
                f"{self._limit}; retry later, or raise the transport's backlog_limit",
                retry_after=1.0,
            )
        job = _Publish(self, envs, dedupe_key, self.clock(), delay, entries)
        self._reserved += len(envs)
        try:
            duplicate_of = await self.writer.submit(job)
        finally:
            self._reserved -= len(envs)
        if duplicate_of is not None:
            return PublishResult(accepted=[], duplicate_of=duplicate_of)
        return PublishResult(accepted=[e.id for e in envs])

    def enqueue(self, envelope: Envelope, available_at: float, *, new: bool = True) -> None:
        """Hand a committed queued message to its flow's scheduler (``new``: count it in the backlog)."""
        if new:
            self._backlog[envelope.flow] += 1
        self._queue(envelope.flow).put(envelope, available_at)

    def settled(self, flow: str) -> None:
        """A message of ``flow`` reached a terminal state."""
        self._backlog[flow] -= 1

    def _queue(self, flow: str) -> FlowQueue:
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = FlowQueue(self.clock, self._poll)
        return queue

    # ----- consuming --------------------------------------------------------------------
    def consume(self, flow: str, handler: Handler, *, concurrency: int = 16) -> None:
        if flow in self._consumers:
            raise TransportError(
                f"embedded transport: flow {flow!r} already has a consumer; call consume() once per flow"
            )
        if concurrency < 1:
            raise ValueError(f"consume({flow!r}): concurrency must be >= 1, got {concurrency}")
        self._consumers[flow] = (handler, concurrency)
        if self._state == "running":
            self._spawn_dispatcher(flow)

    def _spawn_dispatcher(self, flow: str) -> None:
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
            task = asyncio.get_running_loop().create_task(self._deliver(handler, envelope, slots))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _deliver(
        self, handler: Handler, envelope: Envelope, slots: asyncio.Semaphore
    ) -> None:
        delivery = SqliteDelivery(self, envelope)
        try:
            await run_handler(handler, delivery, lambda why: self._crash_retry(delivery, why))
        finally:
            slots.release()

    async def _crash_retry(self, delivery: SqliteDelivery, error: str) -> None:
        envelope = delivery.current
        entry = LedgerEntry(
            envelope.id,
            "step",
            self.clock(),
            flow=envelope.flow,
            step=f"cursor {envelope.cursor}",
            attempt=envelope.attempt,
            outcome="retry",
            error=error,
        )
        try:
            await delivery.retry(envelope, CRASH_RETRY_DELAY, [entry])
        except TransportError as exc:  # it is still queued in SQLite: keep it running here too
            log.error("transport.crash_retry_failed", message_id=envelope.id, error=str(exc))
            self.enqueue(envelope, self.clock() + CRASH_RETRY_DELAY, new=False)

    # ----- ledger -----------------------------------------------------------------------
    async def message(self, message_id: str) -> MessageRecord | None:
        return await self._reader.read(store.get_record, message_id)

    async def history(self, message_id: str) -> list[LedgerEntry]:
        return await self._reader.read(store.get_history, message_id)

    async def search(
        self,
        *,
        flow: str | None = None,
        state: MessageState | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[MessageRecord]:
        return await self._reader.read(
            store.search,
            flow=flow,
            state=state,
            correlation_id=correlation_id,
            since=since,
            until=until,
            limit=limit,
        )

    # ----- dead letters -----------------------------------------------------------------
    async def dead_letters(self, *, flow: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._reader.read(store.dead_letters, flow=flow, limit=limit)

    async def dead_letter(self, message_id: str) -> DeadLetter | None:
        found = await self._reader.read(store.dead_letters, message_id=message_id, limit=1)
        return found[0] if found else None

    async def replay(self, message_id: str, envelope: Envelope | None = None) -> bool:
        if envelope is not None and envelope.id != message_id:
            raise ValueError(
                f"replay({message_id!r}): the envelope has id {envelope.id!r}; "
                "derive it from the dead letter with evolve() so the id stays"
            )
        now = self.clock()

        def work(conn) -> Envelope | None:
            stored = store.dead_envelope(conn, message_id)
            if stored is None:
                return None
            again = envelope if envelope is not None else stored.evolve(attempt=1)
            store.requeue(conn, again, now)
            store.insert_ledger(
                conn,
                [
                    LedgerEntry(
                        message_id,
                        "replayed",
                        now,
                        flow=again.flow,
                        attempt=again.attempt,
                        detail={"cursor": again.cursor},
                    )
                ],
            )
            return again

        def after(again: Envelope | None) -> None:
            if again is not None:
                self.enqueue(again, now)

        return await self.writer.write(work, after) is not None

    async def purge(self, message_ids: Sequence[str]) -> int:
        now = self.clock()

        def work(conn) -> int:
            found = store.purge_dead(conn, message_ids, now)
            store.insert_ledger(
                conn, [LedgerEntry(mid, "purged", now, flow=fl) for mid, fl in found]
            )
            return len(found)

        return await self.writer.write(work)

    # ----- state ------------------------------------------------------------------------
    async def backlog(self, flow: str | None = None) -> int:
        return self._backlog.total() if flow is None else self._backlog[flow]


class _Publish:
    """One publish as a write job (sqlite_writer.Job): its SQL on the writer thread and, once
    committed, its enqueue on the loop. One slotted object rather than closures and a job
    record: a publish waits about a commit cycle, and everything it holds meanwhile is work
    for the garbage collector (closures over these values were a dozen tracked cells)."""

    __slots__ = ("transport", "envs", "dedupe_key", "now", "delay", "entries", "future")

    def __init__(
        self,
        transport: SqliteTransport,
        envs: list[Envelope],
        dedupe_key: str | None,
        now: float,
        delay: float,
        entries: Sequence[LedgerEntry],
    ):
        self.transport, self.envs, self.dedupe_key = transport, envs, dedupe_key
        self.now, self.delay, self.entries = now, delay, entries

    def work(self, conn: sqlite3.Connection) -> list[str] | None:
        """Store the messages; the dedupe claim's ids instead if the key is taken. Plain SQL
        over captured values: the writer may run it again after a rollback."""
        t, now, envs = self.transport, self.now, self.envs
        if now - t._dedupe_expired_at >= DEDUPE_EXPIRY_EVERY:
            store.dedupe_expire(conn, now)
            store.prune_finished(conn, now - t._retention)
            t._dedupe_expired_at = now
        key = self.dedupe_key
        if key is not None:
            ids = [e.id for e in envs]
            first = store.dedupe_claim(conn, key, ids, now, now + t._dedupe_window)
            if first is not None:
                detail = {"dedupe_key": key, "rejected": ids}
                store.insert_ledger(
                    conn, [LedgerEntry(first[0] if first else "", "duplicate", now, detail=detail)]
                )
                return first
        available_at = now + max(self.delay, 0.0)
        store.insert_messages(conn, [(e, available_at) for e in envs], now)
        store.insert_ledger(
            conn, [*(received_entry(e, now, self.delay) for e in envs), *self.entries]
        )
        return None

    def after(self, duplicate_of: list[str] | None) -> None:
        if duplicate_of is None:
            available_at = self.now + max(self.delay, 0.0)
            for e in self.envs:
                self.transport.enqueue(e, available_at)
