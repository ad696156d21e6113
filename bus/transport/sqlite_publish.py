"""Publishes committed together, one statement per table for a whole batch.

The writer thread gives up the GIL around every SQLite call and must take it back after; while
the event loop runs Python, taking it back waits for the loop to yield (up to the interpreter's
switch interval). A publish alone makes three calls (dedupe claim, message, ledger line), so a
batch of 16 webhooks made ~50 such waits on the writer, the serial part of every commit. Here
the batch makes three or four: one multi-row upsert of the dedupe keys (RETURNING the keys it
took), one multi-row INSERT of the messages and one of the ledger lines.

The outcome of each publish is the one ``Publish.work`` gives alone: stored (None), a
duplicate (the ids of the claim that holds its key, with a 'duplicate' ledger line), or, on a
shared file, over the backlog bound; a batch this module cannot take as a whole (a key twice
in it, a shared file) returns None and the writer runs its jobs one by one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from bus.transport import sqlite_store as store
from bus.transport.base import LedgerEntry
from bus.transport.entries import duplicate_entry, received_entry

if TYPE_CHECKING:
    from bus.transport.sqlite import Publish

ROWS_PER_STATEMENT = 500  # well under SQLite's 32,766 bound variables (9 per ledger row)


def publish_together(conn: sqlite3.Connection, jobs: Sequence[Publish]) -> list[Any] | None:
    """Run ``jobs`` (of one transport) as ``Publish.work`` would one by one; their outcomes,
    or None when they must run one by one."""
    t = jobs[0].transport
    if t.queues.shared:  # the backlog bound is checked per publish against the shared count
        return None
    keys = [job.dedupe_key for job in jobs if job.dedupe_key is not None]
    if len(set(keys)) != len(keys):  # which of two equal keys won is up to the order of rows
        return None
    jobs[0].housekeep(conn)
    taken = _claim(conn, jobs, t._dedupe_window) if keys else set()
    outcomes: list[Any] = []
    messages: list[tuple] = []
    lines: list[LedgerEntry] = []
    for job in jobs:
        key, now = job.dedupe_key, job.now
        if key is not None and key not in taken:
            first = store.dedupe_holder(conn, key)
            lines.append(duplicate_entry(key, first, [e.id for e in job.envs], now))
            outcomes.append(first)
            continue
        available_at = now + max(job.delay, 0.0)
        messages += job.message_rows(available_at)
        lines += [received_entry(e, now, job.delay) for e in job.envs]
        lines += job.entries
        outcomes.append(None)
    insert_rows(conn, store.INSERT_MESSAGE, messages, 8)
    insert_rows(conn, store.INSERT_LEDGER, [store.ledger_row(e) for e in lines], 9)
    return outcomes


# A claim still live at the row's own clock (its expiry less the window) keeps its key.
CLAIM_TAIL = (" ON CONFLICT (key) DO UPDATE SET message_ids = excluded.message_ids,"
              " expires_at = excluded.expires_at WHERE dedupe.expires_at <= excluded.expires_at - ?"
              " RETURNING key")


def _claim(conn: sqlite3.Connection, jobs: Sequence[Publish], window: float) -> set[str]:
    """Claim every job's key at once; the keys taken (the others are held by a live claim)."""
    rows = [(job.dedupe_key, orjson.dumps([e.id for e in job.envs]), job.now + window)
            for job in jobs if job.dedupe_key is not None]
    returned = run_rows(conn, "INSERT INTO dedupe (key, message_ids, expires_at)", CLAIM_TAIL,
                        rows, 3, (window,))
    return {key for (key,) in returned}


def insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple], width: int) -> None:
    """``head`` (``INSERT INTO t (columns)``) with ``rows`` of ``width`` values, as few
    statements as SQLite's limit on bound values allows."""
    run_rows(conn, head, "", rows, width)


def run_rows(conn: sqlite3.Connection, head: str, tail: str, rows: list[tuple], width: int,
             tail_args: tuple = ()) -> list[tuple]:
    """``head VALUES (…), (…) tail`` over ``rows`` (then ``tail_args``), in parts of
    ROWS_PER_STATEMENT; what the statements returned (``RETURNING``)."""
    returned: list[tuple] = []
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[i:i + ROWS_PER_STATEMENT]
        cur = conn.execute(_values_sql(head, width, len(part)) + tail,
                           [*(v for row in part for v in row), *tail_args])
        returned += cur.fetchall()
    return returned


@lru_cache(maxsize=64)
def _values_sql(head: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)}"

