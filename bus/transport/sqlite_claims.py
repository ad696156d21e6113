"""The SQL of several processes sharing one embedded file: claims, leases, the shared backlog.

A process claims a due message by writing its name into ``lease_owner`` and moving
``available_at`` to the lease's end: to every other process the message is then not due until
the lease runs out (the visibility timeout of SQS), so a process that dies with messages in
hand delays them by one lease at most. Endings clear the lease (``sqlite_store.update_message``
with ``owner``), renewals push it further. Plain functions over a connection, like
``sqlite_store``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from bus.envelope import Envelope

_QUEUED = "queued"


def claim(
    conn: sqlite3.Connection, flow: str, owner: str, now: float, until: float, limit: int
) -> list[Envelope]:
    """Take up to ``limit`` of ``flow``'s due messages for ``owner`` until ``until``, oldest first."""
    rows = conn.execute(
        "UPDATE messages SET lease_owner = ?, available_at = ? WHERE id IN ("
        " SELECT id FROM messages WHERE state = ? AND flow = ? AND available_at <= ?"
        " ORDER BY available_at LIMIT ?) RETURNING envelope, created_at",
        (owner, until, _QUEUED, flow, now, limit),
    ).fetchall()
    rows.sort(key=lambda row: row[1])
    return [Envelope.from_json(envelope) for envelope, _ in rows]


def renew(conn: sqlite3.Connection, owner: str, ids: Iterable[str], until: float) -> None:
    """Extend ``owner``'s leases on ``ids`` (messages still in its hands) to ``until``."""
    conn.executemany(
        "UPDATE messages SET available_at = ? WHERE id = ? AND lease_owner = ? AND state = ?",
        [(until, mid, owner, _QUEUED) for mid in ids],
    )


def release(
    conn: sqlite3.Connection, owner: str, now: float, ids: Sequence[str] | None = None
) -> int:
    """Give ``owner``'s leases back (on ``ids``, or all of them): those messages are due now.

    All of them: a supervisor does this for a worker it saw die, so the messages that worker
    had in hand run again at once instead of after their lease.
    """
    if ids is not None:
        return conn.executemany(
            "UPDATE messages SET lease_owner = NULL, available_at = ?"
            " WHERE id = ? AND lease_owner = ? AND state = ?",
            [(now, mid, owner, _QUEUED) for mid in ids],
        ).rowcount
    return conn.execute(
        "UPDATE messages SET lease_owner = NULL, available_at = ?"
        " WHERE state = ? AND lease_owner = ?",
        (now, _QUEUED, owner),
    ).rowcount


def clear_leases(conn: sqlite3.Connection, now: float) -> None:
    """Forget every lease (a process opening the file alone: their holders are gone)."""
    conn.execute(
        "UPDATE messages SET lease_owner = NULL, available_at = min(available_at, ?)"
        " WHERE state = ? AND lease_owner IS NOT NULL",
        (now, _QUEUED),
    )


def next_due(conn: sqlite3.Connection, flow: str) -> float | None:
    """When ``flow``'s next queued message is due (maybe already), or None if it has none."""
    return conn.execute(
        "SELECT min(available_at) FROM messages WHERE state = ? AND flow = ?", (_QUEUED, flow)
    ).fetchone()[0]


def backlog_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Queued messages per flow, as the triggers of schema version 2 keep them."""
    return dict(conn.execute("SELECT flow, queued FROM backlog WHERE queued > 0").fetchall())


def backlog_total(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(queued), 0) FROM backlog").fetchone()[0]
