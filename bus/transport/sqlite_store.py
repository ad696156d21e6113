"""The SQL of the embedded transport: writes (run inside the writer's transaction) and reads.

Plain functions over a ``sqlite3.Connection``; no threads, no asyncio. The tables are in
``sqlite_schema``; the SQL of processes sharing a file (claims, leases) in ``sqlite_claims``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import orjson

from bus.envelope import Envelope
from bus.errors import LeaseLostError
from bus.transport.base import DeadLetter, LedgerEntry, MessageRecord, MessageState

_QUEUED = MessageState.QUEUED.value
_DEAD = MessageState.DEAD.value


# ----- writes (inside the writer's transaction) --------------------------------------------
INSERT_MESSAGE = ("INSERT INTO messages (id, flow, state, envelope, available_at, created_at,"
                  " updated_at, correlation_id)")
INSERT_LEDGER = "INSERT INTO ledger (message_id, at, kind, flow, step, attempt, outcome, error, detail)"


ENVELOPE_COLUMN = 3  # where a message_row holds the envelope's JSON


def message_row(e: Envelope, available_at: float, now: float) -> tuple:
    """The values of INSERT_MESSAGE for ``e``, queued."""
    return (e.id, e.flow, _QUEUED, e.to_json(), available_at, now, now, e.correlation_id)


def ledger_row(e: LedgerEntry) -> tuple:
    """The values of INSERT_LEDGER for ``e``."""
    return (e.message_id, e.at, e.kind, e.flow, e.step, e.attempt, e.outcome, e.error,
            orjson.dumps(e.detail) if e.detail else None)


def insert_messages(
    conn: sqlite3.Connection, rows: Iterable[tuple[Envelope, float]], now: float
) -> None:
    """Store envelopes as queued messages, each with its own ``available_at``."""
    insert_message_rows(conn, [message_row(e, at, now) for e, at in rows])


def insert_message_rows(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Store ``message_row`` values."""
    conn.executemany(INSERT_MESSAGE + " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def insert_ledger(conn: sqlite3.Connection, entries: Iterable[LedgerEntry]) -> None:
    conn.executemany(INSERT_LEDGER + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [ledger_row(e) for e in entries])


def update_message(
    conn: sqlite3.Connection,
    envelope: Envelope,
    now: float,
    *,
    state: MessageState | None = None,
    available_at: float | None = None,
    error: str | None = None,
    owner: str | None = None,
    release: bool = False,
) -> None:
    """Store the message's new envelope, and its new state / availability when given.

    ``owner``: only if this process still holds the message's lease (processes sharing the
    file), else LeaseLostError; ``release``: the ending gives the lease up.
    """
    sql = (
        "UPDATE messages SET envelope = ?, updated_at = ?, state = coalesce(?, state),"
        " available_at = coalesce(?, available_at), error = coalesce(?, error)"
        f"{', lease_owner = NULL' if release else ''} WHERE id = ?"
    )
    args = [envelope.to_json(), now, state.value if state else None, available_at, error, envelope.id]
    if owner is None:
        conn.execute(sql, args)
    elif not conn.execute(sql + " AND lease_owner = ?", [*args, owner]).rowcount:
        raise LeaseLostError(
            f"message {envelope.id}: its lease passed to another process (held longer than "
            "the lease, or released after this process was thought dead); that run decides it"
        )


PRUNE_BATCH = 2000  # rows one housekeeping pass deletes at most: it runs inside a commit

# Literal states: SQLite uses the partial index messages_finished only for a WHERE it can prove
# implies the index's own, which a bound parameter is not; INDEXED BY, as without statistics
# the planner prefers messages_state_flow (every row of those states: the whole table).
_FINISHED = (
    "SELECT id FROM messages INDEXED BY messages_finished"
    " WHERE state IN ('delivered', 'filtered', 'purged')"
    " AND updated_at < ? ORDER BY updated_at LIMIT ?"
)


def prune_finished(conn: sqlite3.Connection, before: float, limit: int = PRUNE_BATCH) -> int:
    """Forget up to ``limit`` delivered, filtered and purged messages (and their ledger) last
    touched before ``before``, oldest first; how many. From the messages_finished index: the
    pass costs what it deletes, not the size of the table (197 ms per pass at 1,000,000
    messages without it, measured)."""
    conn.execute(f"DELETE FROM ledger WHERE message_id IN ({_FINISHED})", (before, limit))
    cur = conn.execute(f"DELETE FROM messages WHERE id IN ({_FINISHED})", (before, limit))
    return cur.rowcount


def dedupe_claim(
    conn: sqlite3.Connection, key: str, ids: Sequence[str], now: float, expires_at: float
) -> list[str] | None:
    """Take ``key`` for ``ids`` until ``expires_at``; if a claim still live at ``now`` holds it,
    change nothing and return that claim's message ids (the event is a duplicate).

    One upsert instead of a lookup and an insert: an expired claim is overwritten in place,
    a live one is left alone (no row changed), so the common case is one b-tree write.
    """
    cur = conn.execute(
        "INSERT INTO dedupe (key, message_ids, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET message_ids = excluded.message_ids,"
        " expires_at = excluded.expires_at WHERE dedupe.expires_at <= ?",
        (key, orjson.dumps(list(ids)), expires_at, now),
    )
    if cur.rowcount:
        return None
    return dedupe_holder(conn, key)


def dedupe_holder(conn: sqlite3.Connection, key: str) -> list[str]:
    """The message ids of the claim on ``key`` (one that is there)."""
    row = conn.execute("SELECT message_ids FROM dedupe WHERE key = ?", (key,)).fetchone()
    return orjson.loads(row[0])


def dedupe_expire(conn: sqlite3.Connection, now: float, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` expired dedupe claims, oldest first (an expired claim left over is
    harmless: ``dedupe_claim`` overwrites it); how many."""
    cur = conn.execute(
        "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe WHERE expires_at <= ?"
        " ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return cur.rowcount


def insert_dead(
    conn: sqlite3.Connection,
    envelope: Envelope,
    step: str | None,
    error: str,
    chain: Sequence[str],
    now: float,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO dead (message_id, flow, step, error, error_chain, dead_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (envelope.id, envelope.flow, step, error, orjson.dumps(list(chain)), now),
    )


def dead_envelope(conn: sqlite3.Connection, message_id: str) -> Envelope | None:
    """The stored envelope of ``message_id`` if it is a dead letter, else None."""
    row = conn.execute(
        "SELECT envelope FROM messages WHERE id = ? AND state = ?", (message_id, _DEAD)
    ).fetchone()
    return Envelope.from_json(row[0]) if row else None


def requeue(conn: sqlite3.Connection, envelope: Envelope, now: float) -> None:
    """A dead letter becomes a queued message again, available now."""
    conn.execute(
        "UPDATE messages SET envelope = ?, state = ?, available_at = ?, updated_at = ?,"
        " error = NULL WHERE id = ?",
        (envelope.to_json(), _QUEUED, now, now, envelope.id),
    )
    conn.execute("DELETE FROM dead WHERE message_id = ?", (envelope.id,))


def purge_dead(
    conn: sqlite3.Connection, message_ids: Sequence[str], now: float
) -> list[tuple[str, str]]:
    """Mark the dead letters among ``message_ids`` purged; returns their (id, flow)."""
    found: list[tuple[str, str]] = []
    for mid in dict.fromkeys(message_ids):  # keeps order, drops repeats
        row = conn.execute(
            "SELECT flow FROM messages WHERE id = ? AND state = ?", (mid, _DEAD)
        ).fetchone()
        if row:
            found.append((mid, row[0]))
    conn.executemany(
        "UPDATE messages SET state = ?, updated_at = ? WHERE id = ?",
        [(MessageState.PURGED.value, now, mid) for mid, _ in found],
    )
    conn.executemany("DELETE FROM dead WHERE message_id = ?", [(mid,) for mid, _ in found])
    return found


# ----- reads ----------------------------------------------------------------------------
_RECORD_COLUMNS = "envelope, state, available_at, updated_at, error"


def _record(row: tuple) -> MessageRecord:
    return MessageRecord(
        envelope=Envelope.from_json(row[0]),
        state=MessageState(row[1]),
        available_at=row[2],
        updated_at=row[3],
        error=row[4],
    )


def _entry(row: tuple) -> LedgerEntry:
    return LedgerEntry(
        message_id=row[0],
        at=row[1],
        kind=row[2],
        flow=row[3],
        step=row[4],
        attempt=row[5],
        outcome=row[6],
        error=row[7],
        detail=orjson.loads(row[8]) if row[8] else {},
    )


def load_queued(conn: sqlite3.Connection) -> dict[str, tuple[list[str], list[float]]]:
    """Every queued message (ready or scheduled), oldest first, as its id and available_at
    per flow: what a restart must run. Ids, not envelopes: the queues read envelopes back as
    they go. Two flat lists per flow rather than a tuple per row: a large backlog is loaded
    at once, and a tuple per row was most of what that cost in memory."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    rows = conn.execute(
        "SELECT flow, id, available_at FROM messages WHERE state = ? ORDER BY created_at, id",
        (_QUEUED,),
    )
    for flow, message_id, available_at in rows:
        lists = out.get(flow)
        if lists is None:
            lists = out[flow] = ([], [])
        lists[0].append(message_id)
        lists[1].append(available_at)
    return out


def load_envelopes(
    conn: sqlite3.Connection, message_ids: Sequence[str]
) -> dict[str, tuple[Envelope, int]]:
    """The envelopes of those of ``message_ids`` still queued, with their stored JSON's size
    (the queue's byte budget), by id."""
    # The state is checked here, not in SQL: with `state = ?` there SQLite walks the
    # (state, flow) index over every queued message instead of looking the ids up.
    rows = conn.execute(
        f"SELECT id, state, envelope FROM messages WHERE id IN ({','.join('?' * len(message_ids))})",
        message_ids,
    ).fetchall()
    return {mid: (Envelope.from_json(env), len(env)) for mid, state, env in rows if state == _QUEUED}


def get_record(conn: sqlite3.Connection, message_id: str) -> MessageRecord | None:
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    return _record(row) if row else None


def get_history(
    conn: sqlite3.Connection, message_id: str, kind: str | None = None
) -> list[LedgerEntry]:
    sql = (
        "SELECT message_id, at, kind, flow, step, attempt, outcome, error, detail"
        " FROM ledger WHERE message_id = ?"
    )
    args: list[object] = [message_id]
    if kind is not None:
        sql += " AND kind = ?"
        args.append(kind)
    return [_entry(r) for r in conn.execute(sql + " ORDER BY seq", args)]


def search(
    conn: sqlite3.Connection,
    *,
    flow: str | None,
    state: MessageState | None,
    correlation_id: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[MessageRecord]:
    """Messages matching every given filter (``since``/``until`` on first receipt), newest first."""
    clauses, args = [], []
    for column, op, value in (
        ("flow", "=", flow),
        ("state", "=", state.value if state else None),
        ("correlation_id", "=", correlation_id),
        ("created_at", ">=", since),
        ("created_at", "<", until),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            args.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM messages {where} ORDER BY created_at DESC, id DESC LIMIT ?",
        [*args, limit],
    )
    return [_record(r) for r in rows]


def dead_summary(conn: sqlite3.Connection, flow: str) -> tuple[int, float | None]:
    """(count, oldest dead_at) of ``flow``'s dead letters, from the dead_flow_at index."""
    count, oldest = conn.execute(
        "SELECT COUNT(*), MIN(dead_at) FROM dead WHERE flow = ?", (flow,)
    ).fetchone()
    return count, oldest


def dead_letters(
    conn: sqlite3.Connection,
    *,
    flow: str | None = None,
    message_id: str | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """Dead letters, newest first, each with its 'step' ledger entries as ``attempts``."""
    clauses, args = [], []
    if flow is not None:
        clauses.append("d.flow = ?")
        args.append(flow)
    if message_id is not None:
        clauses.append("d.message_id = ?")
        args.append(message_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        "SELECT d.message_id, d.flow, m.envelope, d.step, d.error, d.error_chain, d.dead_at"
        f" FROM dead d JOIN messages m ON m.id = d.message_id {where}"
        " ORDER BY d.dead_at DESC, d.message_id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [
        DeadLetter(
            message_id=mid,
            flow=fl,
            envelope=Envelope.from_json(env),
            step=step,
            error=err,
            error_chain=orjson.loads(chain),
            attempts=get_history(conn, mid, "step"),
            dead_at=at,
        )
        for mid, fl, env, step, err, chain, at in rows
    ]
