"""The write jobs of the embedded transport's group-commit writer (``sqlite_writer``).

A job is a function over the writer's connection, run inside a batch's transaction, and what
to do on the loop once that committed. ``run_jobs`` runs a batch's jobs in order, and hands a
run of jobs of one kind that can work together (publishes: ``sqlite_publish``; some named
operations: ``sqlite_ops``) to one call, so the batch makes few SQLite calls.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Job(Protocol):
    """A write job: ``work`` runs in a batch on the writer thread, ``after`` on the loop once
    the batch committed; ``future`` (set by the writer) gets ``work``'s result.
    ``operation`` is the same write as a named operation and its arguments (``sqlite_ops``),
    for when another process writes for this one (``sqlite_writer_link``)."""

    future: asyncio.Future[Any]

    def work(self, conn: sqlite3.Connection) -> Any: ...

    def after(self, result: Any) -> None: ...

    def operation(self) -> tuple[Callable[..., Any], tuple]: ...


@dataclass(slots=True)
class PlainJob:
    """The job of a ``write(work, after)``."""

    work: Callable[[sqlite3.Connection], Any]
    after: Callable[[Any], None] | None
    future: asyncio.Future[Any] | None = None


class OpJob:
    """The job of a ``call(op, args, after)``: a named operation (``sqlite_ops``). A run of
    jobs of one operation that has a ``together`` (e.g. ``complete``) is written as one."""

    __slots__ = ("op", "args", "context", "after", "future")

    def __init__(self, op: Callable[..., Any], args: tuple, context: Any,
                 after: Callable[[Any], None] | None):
        self.op, self.args, self.context, self.after = op, args, context, after
        self.future: asyncio.Future[Any] | None = None

    def work(self, conn: sqlite3.Connection) -> Any:
        return self.op(self.context, conn, *self.args)

    def group(self) -> Any:
        return self.op

    @staticmethod
    def work_together(conn: sqlite3.Connection, jobs: list[OpJob]) -> list[Any] | None:
        together = getattr(jobs[0].op, "together", None)
        return together(jobs[0].context, conn, [job.args for job in jobs]) if together else None



def _group(job: Job) -> Any:
    """What a job must share with its neighbours to work together with them."""
    group = getattr(job, "group", None)
    return (type(job), group()) if group is not None else type(job)


def run_jobs(conn: sqlite3.Connection, jobs: list[Job]) -> list[tuple[bool, Any]]:
    """Each job's work, in order; a run of jobs of one class (and group) that can work
    together (``work_together``: publishes, ``sqlite_publish``; some named operations,
    ``sqlite_ops``) makes one call for the run. The writer gives up the GIL around every
    SQLite call, and while the loop is busy each one costs a wait to take it back."""
    results: list[tuple[bool, Any]] = []
    i = 0
    while i < len(jobs):
        kind = _group(jobs[i])
        together = getattr(jobs[i], "work_together", None)
        end = i + 1
        while together is not None and end < len(jobs) and _group(jobs[end]) == kind:
            end += 1
        values = together(conn, jobs[i:end]) if end - i > 1 else None
        if values is None:
            values = [job.work(conn) for job in jobs[i:end]]
        results += [(True, v) for v in values]
        i = end
    return results
