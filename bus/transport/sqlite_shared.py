"""The order of work when several processes share one embedded file.

Ingress processes (``tieline serve``), delivery processes (``tieline worker``) and the
operator's CLI may all open the same SQLite file; each then knows only what it committed
itself, so the order of work lives in the file:

- a process *claims* due messages of the flows it consumes (``sqlite_claims.claim``), in the
  same group commit as its other writes, for a lease of ``lease`` seconds, and renews the
  leases of what it still holds every third of that;
- an ending (complete, retry, dead, checkpoint) is recorded only while the lease is still this
  process's (``LeaseLostError`` otherwise), so two processes never both decide a message;
- a process that dies leaves its messages leased: they run again when the lease ends, or at
  once when a supervisor (``tieline run`` with ``workers``) releases them;
- a process that queued messages rings the others' doorbells (``sqlite_doorbell``); a rung
  process, or one whose ``poll`` seconds passed, checks ``PRAGMA data_version`` on a watch
  connection (microseconds of work, so on the loop thread): only when the file changed, or a
  scheduled message fell due, does it look for work, and only when the look finds some does it
  take the write lock to claim it;
- the backlog bound is checked inside each publish's transaction against counters the schema's
  triggers keep (``backlog`` table), so it holds across processes exactly.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import structlog

from bus.envelope import Envelope, new_id
from bus.errors import TransportError
from bus.transport import sqlite_claims as claims
from bus.transport import sqlite_doorbell as doorbell
from bus.transport import sqlite_ops as ops
from bus.transport.base import Handler
from bus.transport.sqlite_writer import open_connection

if TYPE_CHECKING:
    from bus.transport.sqlite import SqliteTransport

log = structlog.get_logger("tieline.transport")

DEFAULT_LEASE = 30.0  # seconds a claimed message stays with its process without a renewal
WORKER_ID_ENV = "TIELINE_WORKER_ID"  # a supervisor names its workers, to release their leases


def process_owner() -> str:
    """This process's lease name: the supervisor's name for it, or a new one."""
    return os.environ.get(WORKER_ID_ENV) or f"{os.getpid()}-{new_id()}"


class SharedQueues:
    """Claims, leases and the shared backlog of one process among several on a file."""

    shared = True

    def __init__(
        self, transport: SqliteTransport, clock: Callable[[], float], poll: float, lease: float
    ):
        if lease <= 0:
            raise ValueError(f"SqliteTransport: lease={lease!r} must be > 0 seconds")
        self._t = transport
        self._clock = clock
        self._poll = poll
        self._lease = lease
        self.owner = process_owner()
        self._consumers: dict[str, tuple[Handler, int]] = {}
        self._held: dict[str, set[str]] = {}  # flow -> ids of the messages in this process's hands
        self._waiting: dict[str, deque[Envelope]] = {}  # flow -> claimed, not yet started
        self._busy: dict[str, int] = {}  # flow -> handlers under way
        self._due: dict[str, float | None] = {}  # flow -> when its next message is due (as last read)
        self._watch: sqlite3.Connection | None = None
        self._version = -1
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task] = set()  # bookkeeping writes nobody waits for
        self._bell = doorbell.Doorbell(self.owner, clock)
        self._running = False

    async def start(self) -> None:
        t = self._t
        self._watch = open_connection(t.path, t.connect, t.sync)
        self._running = True
        if self._consumers:
            self._spawn()

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def release_held(self) -> None:
        """Give back the leases of messages cut off by close(): they are due again at once."""
        ids = [mid for held in self._held.values() for mid in held]
        await asyncio.gather(*self._chores, return_exceptions=True)
        await self._t.writer.call(ops.release, (self.owner, self._clock(), ids))
        self._bell.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # ----- producing --------------------------------------------------------------------
    def reserving(self, count: int) -> nullcontext:
        """The bound is checked in the publish's transaction (``over_bound``), not here."""
        return nullcontext()

    def over_bound(self, conn: sqlite3.Connection, count: int) -> int | None:
        """Inside a publish's transaction: the backlog, if ``count`` more would pass the bound."""
        backlog = claims.backlog_total(conn)
        return backlog if backlog + count > self._t.backlog_limit else None

    def enqueue(self, envelope: Envelope, available_at: float, *, new: bool = True,
                size: int | None = None) -> None:
        """This process committed a queued message: wake the others, and look for work now if
        it is ours to run too (claimed from the file: nothing is held, so ``size`` is unused)."""
        self._bell.ring_soon(self._bells, self._bells_gone)
        if envelope.flow in self._consumers:
            due = self._due.get(envelope.flow)
            self._due[envelope.flow] = available_at if due is None else min(due, available_at)
            self._wake.set()

    def settled(self, flow: str) -> None:
        """Counted by the file's triggers."""

    async def backlog(self, flow: str | None = None) -> int:
        counts = claims.backlog_counts(self._watch_conn())
        return sum(counts.values()) if flow is None else counts.get(flow, 0)

    def _bells(self) -> list[tuple[str, str]]:
        return self._watch_conn().execute("SELECT owner, address FROM doorbells").fetchall()

    def _bells_gone(self, owners: list[str]) -> None:
        self._chore(ops.ring_unregister, (owners,))

    def _chore(self, op: ops.Op, args: tuple) -> None:
        """A write nobody waits for (bookkeeping); a failure is logged, the next one may do it."""
        async def run() -> None:
            try:
                await self._t.writer.call(op, args)
            except TransportError as exc:
                log.warning("transport.bookkeeping_failed", owner=self.owner, error=str(exc))

        task = asyncio.ensure_future(run())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _watch_conn(self) -> sqlite3.Connection:
        if self._watch is None:
            raise TransportError(f"embedded transport {self._t.path}: not running; call start() first")
        return self._watch

    # ----- consuming --------------------------------------------------------------------
    def consume(self, flow: str, handler: Handler, concurrency: int) -> None:
        self._consumers[flow] = (handler, concurrency)
        self._held.setdefault(flow, set())
        self._waiting.setdefault(flow, deque())
        self._busy.setdefault(flow, 0)
        self._due[flow] = None
        self._version = -1  # read every flow's next due time again
        if self._running and not self._tasks:
            self._spawn()
        self._wake.set()

    def _spawn(self) -> None:
        address = self._bell.listen(self._wake.set)
        if address is not None:
            self._chore(ops.ring_register, (self.owner, address))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatch(), name="tieline-claims"),
            loop.create_task(self._renew(), name="tieline-leases"),
        ]

    def _changed(self) -> bool:
        """Whether any connection committed to the file since the last look."""
        version = self._watch_conn().execute("PRAGMA data_version").fetchone()[0]
        changed, self._version = version != self._version, version
        return changed

    async def _dispatch(self) -> None:
        """Keep each flow's handlers busy from what this process claimed, and claim again (up to
        twice the flow's ``concurrency`` in hand) once no more than half of it waits to start,
        so the next claim is back before the handlers run dry; otherwise wait for a change to
        the file or a due time.

        Claiming a batch ahead (a prefetch, as a broker's) spreads one claim's commit over many
        messages instead of one per finished message; what waits in hand is leased like the rest.
        """
        while True:
            if self._changed():
                conn = self._watch_conn()
                for flow in self._consumers:
                    self._due[flow] = claims.next_due(conn, flow)
            now = self._clock()
            wanted = {
                flow: 2 * concurrency - len(self._held[flow])
                for flow, (_, concurrency) in self._consumers.items()
                if len(self._waiting[flow]) <= concurrency // 2 and len(self._held[flow]) < 2 * concurrency
                and (due := self._due[flow]) is not None
                and due <= now
            }
            if wanted:
                try:
                    got = await self._claim(wanted, now)
                except TransportError as exc:  # the disk, say: look again after a pause
                    log.warning("transport.claim_failed", owner=self.owner, error=str(exc))
                    await asyncio.sleep(self._poll * 10)
                    continue
                for flow, envelopes in got.items():
                    if len(envelopes) < wanted[flow]:  # the rest went to others, or is not due
                        self._due[flow] = None
                        self._version = -1
                    self._held[flow].update(e.id for e in envelopes)
                    self._waiting[flow].extend(envelopes)
                    self._start(flow)
                continue
            self._wake.clear()
            timeout = self._poll
            soonest = min((d for d in self._due.values() if d is not None), default=None)
            if soonest is not None:
                timeout = max(0.0, min(timeout, soonest - now))
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _claim(self, wanted: dict[str, int], now: float) -> dict[str, list[Envelope]]:
        """Claim up to ``wanted[flow]`` due messages per flow, in the next group commit."""
        return await self._t.writer.call(ops.claim, (wanted, self.owner, now, now + self._lease))

    def _start(self, flow: str) -> None:
        """Start handlers on ``flow``'s claimed messages while it has free slots."""
        waiting = self._waiting[flow]
        handler, concurrency = self._consumers[flow]
        while waiting and self._busy[flow] < concurrency:
            envelope = waiting.popleft()
            self._busy[flow] += 1
            self._t.start_delivery(handler, envelope, self._ended(flow, envelope.id))

    def _ended(self, flow: str, mid: str) -> Callable[[asyncio.Task], None]:
        def done(_task: asyncio.Task) -> None:
            self._busy[flow] -= 1
            self._held[flow].discard(mid)
            self._start(flow)  # at once, even while a claim is on its way
            self._wake.set()  # maybe claim more

        return done

    async def _renew(self) -> None:
        """Every third of the lease, extend the leases of the messages still in hand."""
        while True:
            await asyncio.sleep(self._lease / 3)
            ids = [mid for held in self._held.values() for mid in held]
            if not ids:
                continue
            try:
                await self._t.writer.call(ops.renew, (self.owner, ids, self._clock() + self._lease))
            except TransportError as exc:  # the disk, say: try again next round
                log.warning("transport.lease_renewal_failed", owner=self.owner, error=str(exc))

    async def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a supervisor, after that worker died)."""
        released = await self._t.writer.call(ops.release, (owner, self._clock(), None))
        if released:
            self._bell.ring_soon(self._bells, self._bells_gone)
        return released
