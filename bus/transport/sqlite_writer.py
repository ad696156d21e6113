"""Connections of the embedded transport: one group-commit writer, one reader.

sqlite3 blocks, so each connection lives on its own single thread. The writer takes jobs
(a function over the connection) from any coroutine; every job queued while the previous
batch was committing goes into the next batch, run in ONE transaction, so N concurrent
writers cost one fsync. Each job runs inside a savepoint: a job that fails is undone alone.
A future resolves only after COMMIT returned; if the commit fails, every job of the batch
fails with TransportError — nothing is acknowledged that was not committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from bus.errors import TransportError
from bus.transport.sqlite_jobs import Job, OpJob, PlainJob, run_jobs

T = TypeVar("T")
Connect = Callable[[Path], sqlite3.Connection]
Sync = Literal["full", "normal"]


def open_connection(path: Path, connect: Connect | None, sync: Sync) -> sqlite3.Connection:
    """A connection in WAL mode with our pragmas; ``connect`` lets tests hand in their own."""
    conn = connect(path) if connect else sqlite3.connect(path)
    conn.isolation_level = None  # we issue BEGIN / COMMIT ourselves
    conn.execute("PRAGMA busy_timeout=5000")
    _while_locked(conn, "PRAGMA journal_mode=WAL", 0.01, 0.01)
    conn.execute(f"PRAGMA synchronous={sync.upper()}")
    # Checkpoint every ~800 KiB (not SQLite's 4 MiB) and keep the WAL file under 1 MiB after:
    # on a small data volume a large WAL would take all the space the database needs.
    conn.execute("PRAGMA wal_autocheckpoint=200")
    conn.execute("PRAGMA journal_size_limit=1048576")
    return conn


class _Batch:
    """Outcome of one batch, filled in on the writer thread: (ok, value-or-exception) per job."""

    def __init__(self, size: int):
        self.results: list[tuple[bool, Any]] = [(False, None)] * size
        self.committed = False
        self.failed = False


LINGER_BELOW = 8  # a batch this small waits ``linger`` for company when the writer is busy
BUSY_GAP = 0.05  # seconds since the last commit within which the writer counts as busy


class GroupCommitWriter:
    """Runs write jobs on a dedicated thread, many jobs per transaction.

    ``linger``: while busy, a small batch waits this long before it commits, so that more
    jobs share the commit. For processes sharing a file: every commit holds the file's one
    write lock through its fsync, so fewer, larger commits are less waiting for all of them
    (measured: 3 ms took a consumer's commits from ~2,900 to ~1,300 for 5,000 messages, its
    CPU per message −45 %, p99 +6 ms). A lone message at idle never waits.
    """

    def __init__(self, path: Path, connect: Connect | None, sync: Sync, linger: float = 0.0,
                 context: Any = None):
        self._path = path
        self.context = context  # the transport handed to named operations (``call``)
        self._linger = linger
        self._last_commit = float("-inf")
        self._connect = connect
        self._sync = sync
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tieline-sqlite-w")
        self._conn: sqlite3.Connection | None = None
        self._jobs: list[Job] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = {"commits": 0, "jobs": 0, "failed_batches": 0, "lock_wait_s": 0.0}

    async def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._thread, self._open, setup)
        self._task = loop.create_task(self._run(), name="tieline-sqlite-writer")

    def _open(self, setup: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
        try:
            conn = open_connection(self._path, self._connect, self._sync)
            setup(conn)
            conn.execute("PRAGMA busy_timeout=0")  # _begin waits for the lock itself
        except sqlite3.Error as exc:
            raise TransportError(
                f"embedded transport {self._path}: cannot open the database ({exc}); "
                "check the path exists, is writable and is a tieline SQLite file"
            ) from exc
        return conn

    async def write(
        self, work: Callable[[sqlite3.Connection], T], after: Callable[[T], None] | None = None
    ) -> T:
        """Run ``work`` in the next batch; ``after(result)`` runs on the loop once committed."""
        return await self.submit(PlainJob(work, after))

    def call(self, op: Callable[..., T], args: tuple,
             after: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Run the named operation ``op(context, conn, *args)`` (``sqlite_ops``) in the next batch."""
        return self.submit(OpJob(op, args, self.context, after))

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue ``job`` for the next batch; returns its future, also set as ``job.future``.

        ``write`` without its coroutine and closures, for the hot path (a publish): a waiting
        job is garbage-collector work, so it should be one object.
        """
        if self._task is None or self._task.done() or self._closing:
            raise TransportError(
                f"embedded transport {self._path}: not running; call start() first (or it was closed)"
            )
        job.future = future = asyncio.get_running_loop().create_future()
        self._jobs.append(job)
        self._wake.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._linger and len(self._jobs) < LINGER_BELOW and (
                    loop.time() - self._last_commit < BUSY_GAP):
                await asyncio.sleep(self._linger)  # busy: let more jobs join this commit
            jobs, self._jobs = self._jobs, []
            try:
                batch = await loop.run_in_executor(self._thread, self._commit, jobs)
            except BaseException as exc:  # the writer itself broke: fail the batch, never hang it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(self._error("run the batch", exc))
                raise
            self._last_commit = loop.time()
            self.stats["jobs"] += len(jobs)
            self.stats["commits"] += batch.committed
            self.stats["failed_batches"] += batch.failed
            for job, (ok, value) in zip(jobs, batch.results, strict=True):
                if ok and job.after is not None:
                    try:
                        job.after(value)
                    except Exception as exc:  # a bug in our own bookkeeping: hand it to the caller
                        ok, value = False, exc
                if not job.future.done():
                    if ok:
                        job.future.set_result(value)
                    else:
                        job.future.set_exception(value)

    def _error(self, what: str, exc: BaseException) -> TransportError:
        err = TransportError(
            f"embedded transport {self._path}: could not {what} ({type(exc).__name__}: {exc}); "
            "nothing of it was stored — check free disk space and that the file is writable"
        )
        err.__cause__ = exc
        return err

    def _commit(self, jobs: list[Job]) -> _Batch:
        """On the writer thread: run ``jobs`` in one transaction.

        Fast path without savepoints (they double the cost of a small job); if any job
        fails, the whole transaction is rolled back and run again job by job in savepoints,
        so only the failing job is refused. Jobs are plain SQL over captured values, so
        running one again after a rollback is safe.
        """
        conn = self._conn
        assert conn is not None
        batch = _Batch(len(jobs))
        try:
            waited = time.perf_counter()
            _begin(conn)
            self.stats["lock_wait_s"] += time.perf_counter() - waited
            results = run_jobs(conn, jobs)
        except Exception:
            self._rollback(conn)
            return self._reclaim_if_full(conn, self._commit_one_by_one(jobs))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            batch.failed = True
            batch.results = [(False, self._error("commit", exc))] * len(jobs)
            return self._reclaim_if_full(conn, batch)
        batch.results, batch.committed = results, True
        return batch

    @staticmethod
    def _reclaim_if_full(conn: sqlite3.Connection, batch: _Batch) -> _Batch:
        """After a 'disk full', move the WAL into the database and truncate it.

        Otherwise the WAL (checkpointed only every ~4 MiB) takes any space an operator frees
        before the database can use it, and a small volume never recovers. When the disk is
        still full this fails too, harmlessly; the next failing batch tries again.
        """
        if any(not ok and _is_full(value) for ok, value in batch.results):
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        return batch

    def _commit_one_by_one(self, jobs: list[Job]) -> _Batch:
        """The slow path: each job in a savepoint, so a failing job is undone alone."""
        conn = self._conn
        assert conn is not None
        batch = _Batch(len(jobs))
        todo = list(range(len(jobs)))
        live: list[int] = []  # jobs whose writes are in the open transaction
        try:
            while todo:
                _begin(conn)
                live, again = [], []
                for pos, i in enumerate(todo):
                    conn.execute("SAVEPOINT job")
                    try:
                        value = jobs[i].work(conn)
                    except Exception as exc:
                        batch.results[i] = (False, self._wrap(exc))
                        if conn.in_transaction:  # only this job is undone
                            conn.execute("ROLLBACK TO job")
                            conn.execute("RELEASE job")
                            continue
                        # SQLite rolled back the whole transaction (e.g. disk full): the jobs
                        # before this one were lost with it, so run them and the rest again.
                        again = live + todo[pos + 1 :]
                        break
                    conn.execute("RELEASE job")
                    batch.results[i] = (True, value)
                    live.append(i)
                todo = again  # each round drops the failing job, so this ends
                for i in todo:
                    batch.results[i] = (False, None)
            if conn.in_transaction:
                conn.execute("COMMIT")
                batch.committed = True
        except sqlite3.Error as exc:
            batch.failed = True
            self._rollback(conn)
            for i in live:
                batch.results[i] = (False, self._error("commit", exc))
            for i, (ok, value) in enumerate(batch.results):
                if not ok and value is None:  # never reached
                    batch.results[i] = (False, self._error("commit", exc))
        return batch

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # the batch is failing already; SQLite discards it on close
                pass

    def _wrap(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.IntegrityError):  # a caller's mistake, not the disk's
            err = TransportError(
                f"embedded transport {self._path}: refused a write ({exc}); a message with "
                "that id is already stored — give every new message its own id (Envelope.new)"
            )
            err.__cause__ = exc
            return err
        return self._error("write", exc) if isinstance(exc, sqlite3.Error) else exc

    async def close(self) -> None:
        """Commit everything queued so far, then close the connection."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
        self._thread.shutdown(wait=True)


class Reader:
    """A read-only connection on its own thread (WAL lets it read while the writer writes)."""

    def __init__(self, path: Path, connect: Connect | None, sync: Sync):
        self._path, self._connect, self._sync = path, connect, sync
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tieline-sqlite-r")
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._conn = await asyncio.get_running_loop().run_in_executor(
            self._thread, open_connection, self._path, self._connect, self._sync
        )

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._conn is None:
            raise TransportError(
                f"embedded transport {self._path}: not running; call start() first"
            )
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: fn(conn, *args, **kwargs)
        )

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)


LOCK_WAIT = 5.0  # seconds a statement waits for another process's lock before it fails


def _while_locked(conn: sqlite3.Connection, statement: str, pause: float, longest: float) -> None:
    """Run ``statement``, trying again while another process holds the lock it needs: from
    ``pause`` seconds apart, growing by half each time up to ``longest``, for LOCK_WAIT at most.

    Two statements need it. ``BEGIN IMMEDIATE``: SQLite's own busy handler sleeps 1, 2, 5,
    10, 15… ms between tries, and with several processes on one file committing hundreds of
    times a second those sleeps were most of a claim's latency (bench/RESULTS.md, session 4),
    so the writer turns it off and waits here in 0.1–1 ms steps (in WAL mode only taking the
    write lock waits: readers never block, a COMMIT holds what it needs). And the switch to
    WAL of a new file: it takes an exclusive lock, and a second process asking at that moment
    gets "database is locked" at once, busy timeout or not (four processes starting together).
    """
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 1.5, longest)


def _begin(conn: sqlite3.Connection) -> None:
    _while_locked(conn, "BEGIN IMMEDIATE", 0.0001, 0.001)


def _is_full(exc: object) -> bool:
    while exc is not None:
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            return True
        exc = getattr(exc, "__cause__", None)
    return False
