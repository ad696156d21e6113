"""The embedded transport: asyncio in-process, durable in one SQLite file (WAL, group commit).

SQLite holds the truth (messages, ledger, dead letters, dedupe keys). Every write returns
after COMMIT, so a crash loses nothing acknowledged. Who orders the work depends on how many
processes use the file:

- alone (``shared=False``, the default; ``sqlite_local``): memory holds the order of work and
  the backlog counters; on start() every queued message, including those a killed process had
  in flight, runs again;
- shared (``shared=True``; ``sqlite_shared``): ingress, worker and CLI processes on one machine
  open the same file and claim messages from it under leases, so delivery uses more than one
  core. ``sqlite_lock`` keeps the two kinds of process off each other's file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from bus.envelope import Envelope
from bus.errors import BackpressureError, LeaseLostError, TransportError
from bus.transport import sqlite_ops as ops
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
from bus.transport.entries import duplicate_entry, received_entry
from bus.transport.sqlite_delivery import SqliteDelivery
from bus.transport.sqlite_local import LocalQueues
from bus.transport.sqlite_lock import FileLock
from bus.transport.sqlite_publish import publish_together
from bus.transport.sqlite_schema import create_schema
from bus.transport.sqlite_shared import DEFAULT_LEASE, SharedQueues
from bus.transport.sqlite_writer import Connect, GroupCommitWriter, Reader, Sync
from bus.transport.sqlite_writer_link import SharedWriter

log = structlog.get_logger()

CRASH_RETRY_DELAY = 1.0  # seconds before a message whose handler raised runs again
DEDUPE_EXPIRY_EVERY = 60.0  # housekeeping (expired dedupe keys, finished messages) this often,
# or every second while a pass hits store.PRUNE_BATCH
SHARED_LINGER = 0.003  # seconds a small batch waits for company on a shared file (sqlite_writer)
# "1": on a shared file, one process writes for all (sqlite_writer_link). Off by default: at
# 1,000 msg/s with --workers 2 it did not yet beat every process writing itself (RESULTS.md).
ONE_WRITER_ENV = "TIELINE_ONE_WRITER"


class SqliteTransport(Transport):
    """Durable queue per flow, ledger, dead letters and inbound dedupe in one SQLite file.

    ``shared``: several processes use the file (see the module docstring); ``lease``: how long
    a claimed message stays with a process that stops renewing it (shared only).
    ``connect`` (tests, tooling) builds each sqlite3 connection instead of ``sqlite3.connect``.
    ``stats`` counts commits and write jobs: jobs/commits is the group-commit factor.
    ``one_writer`` (shared only; default: the TIELINE_ONE_WRITER environment variable is "1"):
    the processes on the file hand their writes to one of them (``sqlite_writer_link``).
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
        shared: bool = False,
        lease: float = DEFAULT_LEASE,
        one_writer: bool | None = None,
    ):
        if sync not in ("full", "normal"):
            raise ValueError(f"SqliteTransport: sync={sync!r} is not 'full' or 'normal'")
        self.path = Path(path)
        self.clock = clock
        self.backlog_limit = backlog_limit
        self.sync: Sync = sync
        self.connect = connect
        self._dedupe_window = dedupe_window
        self._retention = retention
        own = GroupCommitWriter(self.path, connect, sync, SHARED_LINGER if shared else 0.0, self)
        if one_writer is None:
            one_writer = os.environ.get(ONE_WRITER_ENV) == "1"
        # one_writer: one process commits for all sharing the file (sqlite_writer_link)
        self.writer: GroupCommitWriter | SharedWriter = (
            SharedWriter(own, self.path) if shared and one_writer else own)
        self.reader = Reader(self.path, connect, sync)
        self.stats = self.writer.stats
        # Alone, a timer wakes its queue itself, so the poll only bounds a jumping clock; shared,
        # it bounds how late another process's commit is seen when its doorbell ring is lost.
        self.queues: LocalQueues | SharedQueues = (
            SharedQueues(self, clock, poll_interval, lease) if shared
            else LocalQueues(self, clock, poll_interval)
        )
        self._lock = FileLock(self.path, shared=shared)
        self._consumed: set[str] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._dedupe_expired_at = float("-inf")  # touched on the writer thread only
        self._state = "new"

    @property
    def owner(self) -> str | None:
        """This process's lease name when the file is shared, else None."""
        return self.queues.owner

    # ----- life -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state != "new":
            raise TransportError(f"embedded transport {self.path}: start() called twice")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            await self.writer.start(create_schema)
            await self.reader.start()
            await self.queues.start()
        except BaseException:
            self._lock.release()
            raise
        self._state = "running"

    async def close(self, timeout: float = 10.0) -> None:
        if self._state != "running":
            return
        self._state = "closing"
        await self.queues.stop()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            for task in pending:  # their messages stay queued in SQLite and run again later
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.queues.release_held()
        await self.writer.close()
        await self.reader.close()
        self._lock.release()
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
        with self.queues.reserving(len(envs)):
            job = Publish(self, envs, dedupe_key, self.clock(), delay, entries)
            outcome = await self.writer.submit(job)
        if isinstance(outcome, _OverBound):
            raise BackpressureError(
                f"embedded transport {self.path}: backlog is {outcome.backlog} messages, the "
                f"bound is {self.backlog_limit}; retry later, or raise the transport's backlog_limit",
                retry_after=1.0,
            )
        if outcome is not None:
            return PublishResult(accepted=[], duplicate_of=outcome)
        return PublishResult(accepted=[e.id for e in envs])

    def enqueue(self, envelope: Envelope, available_at: float, *, new: bool = True,
                size: int | None = None) -> None:
        """A queued message was committed (``new``: not yet counted in the backlog; ``size``:
        bytes of its stored JSON, if known)."""
        self.queues.enqueue(envelope, available_at, new=new, size=size)

    def settled(self, flow: str) -> None:
        """A message of ``flow`` reached a terminal state."""
        self.queues.settled(flow)

    # ----- consuming --------------------------------------------------------------------
    def consume(self, flow: str, handler: Handler, *, concurrency: int = 16) -> None:
        if flow in self._consumed:
            raise TransportError(
                f"embedded transport: flow {flow!r} already has a consumer; call consume() once per flow"
            )
        if concurrency < 1:
            raise ValueError(f"consume({flow!r}): concurrency must be >= 1, got {concurrency}")
        self._consumed.add(flow)
        self.queues.consume(flow, handler, concurrency)

    def start_delivery(
        self, handler: Handler, envelope: Envelope, done: Callable[[asyncio.Task], None]
    ) -> None:
        """Run ``handler`` on ``envelope`` in a task; ``done`` frees the queue's slot after."""
        task = asyncio.get_running_loop().create_task(self._deliver(handler, envelope))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(done)

    async def _deliver(self, handler: Handler, envelope: Envelope) -> None:
        delivery = SqliteDelivery(self, envelope)
        try:
            await run_handler(handler, delivery, lambda why: self._crash_retry(delivery, why))
        except LeaseLostError as exc:  # another process runs it now; this run's end is void
            log.warning("transport.lease_lost", message_id=envelope.id, flow=envelope.flow,
                        owner=self.owner, error=str(exc))

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
        except LeaseLostError:
            raise
        except TransportError as exc:  # it is still queued in SQLite: keep it running here too
            log.error("transport.crash_retry_failed", message_id=envelope.id, error=str(exc))
            self.enqueue(envelope, self.clock() + CRASH_RETRY_DELAY, new=False)

    async def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds, e.g. after a supervisor saw that worker die
        (shared only); returns how many messages are due again."""
        if not isinstance(self.queues, SharedQueues):
            raise TransportError(f"embedded transport {self.path}: release() needs shared=True")
        return await self.queues.release(owner)

    # ----- ledger -----------------------------------------------------------------------
    async def message(self, message_id: str) -> MessageRecord | None:
        return await self.reader.read(store.get_record, message_id)

    async def history(self, message_id: str) -> list[LedgerEntry]:
        return await self.reader.read(store.get_history, message_id)

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
        return await self.reader.read(
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
        return await self.reader.read(store.dead_letters, flow=flow, limit=limit)

    async def dead_letter(self, message_id: str) -> DeadLetter | None:
        found = await self.reader.read(store.dead_letters, message_id=message_id, limit=1)
        return found[0] if found else None

    async def dead_letter_summary(self, flow: str) -> tuple[int, float | None]:
        return await self.reader.read(store.dead_summary, flow)

    async def replay(self, message_id: str, envelope: Envelope | None = None) -> bool:
        if envelope is not None and envelope.id != message_id:
            raise ValueError(
                f"replay({message_id!r}): the envelope has id {envelope.id!r}; "
                "derive it from the dead letter with evolve() so the id stays"
            )
        now = self.clock()

        def after(again: Envelope | None) -> None:
            if again is not None:
                self.enqueue(again, now)

        return await self.writer.call(ops.replay, (message_id, envelope, now), after) is not None

    async def purge(self, message_ids: Sequence[str]) -> int:
        return await self.writer.call(ops.purge, (list(message_ids), self.clock()))

    # ----- state ------------------------------------------------------------------------
    async def backlog(self, flow: str | None = None) -> int:
        return await self.queues.backlog(flow)


class _OverBound:
    """What a shared publish's transaction found instead of room: the backlog at that moment."""

    __slots__ = ("backlog",)

    def __init__(self, backlog: int):
        self.backlog = backlog


class Publish:
    """One publish as a write job (sqlite_writer.Job): its SQL on the writer thread and, once
    committed, its enqueue on the loop (``ops.publish`` when another process writes). One slotted object rather than closures and a job
    record: a publish waits about a commit cycle, and everything it holds meanwhile is work
    for the garbage collector (closures over these values were a dozen tracked cells)."""

    __slots__ = ("transport", "envs", "dedupe_key", "now", "delay", "entries", "future", "sizes")

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
        # Bytes of each envelope's stored JSON, noted on the writer thread as it writes them:
        # the queue's byte budget, without serialising the envelope a second time.
        self.sizes: list[int] | None = None

    def message_rows(self, available_at: float) -> list[tuple]:
        """The messages table's rows of ``envs``, noting their sizes."""
        rows = [store.message_row(e, available_at, self.now) for e in self.envs]
        self.sizes = [len(row[store.ENVELOPE_COLUMN]) for row in rows]
        return rows

    def work(self, conn: sqlite3.Connection) -> list[str] | _OverBound | None:
        """Store the messages; the dedupe claim's ids instead if the key is taken, or the
        backlog if the file is shared and full. Plain SQL over captured values: the writer
        may run it again after a rollback."""
        t, now, envs = self.transport, self.now, self.envs
        self.housekeep(conn)
        if t.queues.shared and (backlog := t.queues.over_bound(conn, len(envs))) is not None:
            return _OverBound(backlog)
        key = self.dedupe_key
        if key is not None:
            ids = [e.id for e in envs]
            first = store.dedupe_claim(conn, key, ids, now, now + t._dedupe_window)
            if first is not None:
                store.insert_ledger(conn, [duplicate_entry(key, first, ids, now)])
                return first
        available_at = now + max(self.delay, 0.0)
        store.insert_message_rows(conn, self.message_rows(available_at))
        store.insert_ledger(
            conn, [*(received_entry(e, now, self.delay) for e in envs), *self.entries]
        )
        return None

    @staticmethod
    def work_together(conn: sqlite3.Connection, jobs: list[Publish]) -> list[Any] | None:
        """``work`` of each of ``jobs`` in a few statements (``sqlite_publish``), or None."""
        return publish_together(conn, jobs)

    def housekeep(self, conn: sqlite3.Connection) -> None:
        """Every DEDUPE_EXPIRY_EVERY seconds: drop expired dedupe claims, finished messages."""
        t, now = self.transport, self.now
        if now - t._dedupe_expired_at >= DEDUPE_EXPIRY_EVERY:
            batch = store.PRUNE_BATCH
            expired = store.dedupe_expire(conn, now, batch)
            pruned = store.prune_finished(conn, now - t._retention, batch)
            behind = max(expired, pruned) >= batch  # more left: again in a second
            t._dedupe_expired_at = now - (DEDUPE_EXPIRY_EVERY - 1.0 if behind else 0.0)

    def operation(self) -> tuple[ops.Op, tuple]:
        return ops.publish, (self.envs, self.dedupe_key, self.now, self.delay, list(self.entries))

    def after(self, outcome: list[str] | _OverBound | None) -> None:
        if outcome is None:
            available_at = self.now + max(self.delay, 0.0)
            sizes = self.sizes or [None] * len(self.envs)  # None: written by another process
            for e, size in zip(self.envs, sizes, strict=True):
                self.transport.enqueue(e, available_at, size=size)
