"""Every write the embedded transport makes, as a named operation.

An operation is a plain function ``op(transport, conn, *args)``: its SQL inside the writer's
transaction, over values the caller captured. Naming them (rather than handing the writer a
closure) is what lets a process on a shared file have its writes committed by another one
(``sqlite_writer_link``): the name and the arguments cross a socket, the function does not.
``transport`` is that of the process whose writer runs the operation; only ``publish`` reads
it (the housekeeping clock, the dedupe window, the shared backlog).

Whatever is to happen in memory once the write committed (enqueue, settled) stays with the
caller, as the writer's ``after``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bus.envelope import Envelope
from bus.transport import sqlite_claims as claims
from bus.transport import sqlite_doorbell as doorbell
from bus.transport import sqlite_store as store
from bus.transport.base import LedgerEntry, MessageState
from bus.transport.sqlite_publish import insert_rows, run_rows

if TYPE_CHECKING:
    from bus.transport.sqlite import SqliteTransport

Op = Callable[..., Any]
OPS: dict[str, Op] = {}


def operation(fn: Op) -> Op:
    """Register ``fn`` under its name: the only functions a writer runs for another process."""
    OPS[fn.__name__] = fn
    return fn


@operation
def publish(t: SqliteTransport, conn: sqlite3.Connection, envs: list[Envelope],
            dedupe_key: str | None, now: float, delay: float,
            entries: Sequence[LedgerEntry]) -> Any:
    from bus.transport.sqlite import Publish  # the hot path's own job object

    return Publish(t, envs, dedupe_key, now, delay, entries).work(conn)


@operation
def checkpoint(t: SqliteTransport, conn: sqlite3.Connection, envelope: Envelope, now: float,
               owner: str | None, entries: Sequence[LedgerEntry]) -> None:
    store.update_message(conn, envelope, now, owner=owner)
    store.insert_ledger(conn, entries)


@operation
def complete(t: SqliteTransport, conn: sqlite3.Connection, envelope: Envelope, now: float,
             state: MessageState, owner: str | None, children: list[tuple[Envelope, float]],
             lines: Sequence[LedgerEntry]) -> None:
    store.update_message(conn, envelope, now, state=state, owner=owner, release=True)
    if children:
        store.insert_messages(conn, children, now)
    store.insert_ledger(conn, lines)


def complete_together(t: SqliteTransport, conn: sqlite3.Connection,
                      calls: list[tuple]) -> list[None] | None:
    """Several ``complete`` calls as three statements: the messages' new state in one UPDATE
    (FROM a VALUES list), their children in one INSERT, every ledger line in one INSERT.
    None (run them one by one) when a lease must be checked (a shared file)."""
    if any(owner is not None for _, _, _, owner, _, _ in calls):
        return None
    updates, children, lines = [], [], []
    for envelope, now, state, _, kids, entries in calls:
        updates.append((envelope.id, envelope.to_json(), now, state.value))
        children += [store.message_row(child, at, now) for child, at in kids]
        lines += entries
    run_rows(conn, "UPDATE messages SET envelope = v.column2, updated_at = v.column3,"
             " state = v.column4, lease_owner = NULL FROM (", _BY_ID, updates, 4)
    insert_rows(conn, store.INSERT_MESSAGE, children, 8)
    insert_rows(conn, store.INSERT_LEDGER, [store.ledger_row(e) for e in lines], 9)
    return [None] * len(calls)


def checkpoint_together(t: SqliteTransport, conn: sqlite3.Connection,
                        calls: list[tuple]) -> list[None] | None:
    """Several ``checkpoint`` calls as two statements (see complete_together)."""
    if any(owner is not None for _, _, owner, _ in calls):
        return None
    updates = [(envelope.id, envelope.to_json(), now) for envelope, now, _, _ in calls]
    run_rows(conn, "UPDATE messages SET envelope = v.column2, updated_at = v.column3 FROM (",
             _BY_ID, updates, 3)
    lines = [store.ledger_row(e) for _, _, _, entries in calls for e in entries]
    insert_rows(conn, store.INSERT_LEDGER, lines, 9)
    return [None] * len(calls)


_BY_ID = ") AS v WHERE messages.id = v.column1"
checkpoint.together = checkpoint_together  # type: ignore[attr-defined]
complete.together = complete_together  # type: ignore[attr-defined]


@operation
def retry(t: SqliteTransport, conn: sqlite3.Connection, envelope: Envelope, now: float,
          available_at: float, owner: str | None, lines: Sequence[LedgerEntry]) -> None:
    store.update_message(conn, envelope, now, available_at=available_at, owner=owner, release=True)
    store.insert_ledger(conn, lines)


@operation
def dead(t: SqliteTransport, conn: sqlite3.Connection, envelope: Envelope, now: float,
         error: str, error_chain: Sequence[str], step: str | None, owner: str | None,
         lines: Sequence[LedgerEntry]) -> None:
    store.update_message(
        conn, envelope, now, state=MessageState.DEAD, error=error, owner=owner, release=True
    )
    store.insert_dead(conn, envelope, step, error, error_chain, now)
    store.insert_ledger(conn, lines)


@operation
def replay(t: SqliteTransport, conn: sqlite3.Connection, message_id: str,
           envelope: Envelope | None, now: float) -> Envelope | None:
    stored = store.dead_envelope(conn, message_id)
    if stored is None:
        return None
    again = envelope if envelope is not None else stored.evolve(attempt=1)
    store.requeue(conn, again, now)
    store.insert_ledger(conn, [LedgerEntry(
        message_id, "replayed", now, flow=again.flow, attempt=again.attempt,
        detail={"cursor": again.cursor},
    )])
    return again


@operation
def purge(t: SqliteTransport, conn: sqlite3.Connection, message_ids: Sequence[str],
          now: float) -> int:
    found = store.purge_dead(conn, message_ids, now)
    store.insert_ledger(conn, [LedgerEntry(mid, "purged", now, flow=fl) for mid, fl in found])
    return len(found)


# ----- the order of work on a shared file (sqlite_shared) ------------------------------------
@operation
def claim(t: SqliteTransport, conn: sqlite3.Connection, wanted: dict[str, int], owner: str,
          now: float, until: float) -> dict[str, list[Envelope]]:
    return {f: claims.claim(conn, f, owner, now, until, n) for f, n in wanted.items()}


@operation
def renew(t: SqliteTransport, conn: sqlite3.Connection, owner: str, ids: list[str],
          until: float) -> None:
    claims.renew(conn, owner, ids, until)


@operation
def release(t: SqliteTransport, conn: sqlite3.Connection, owner: str, now: float,
            ids: list[str] | None) -> int:
    """Give back ``owner``'s leases (on ``ids``, or all) and take down its doorbell."""
    doorbell.unregister(conn, [owner])
    return claims.release(conn, owner, now, ids)


@operation
def ring_register(t: SqliteTransport, conn: sqlite3.Connection, owner: str, address: str) -> None:
    doorbell.register(conn, owner, address)


@operation
def ring_unregister(t: SqliteTransport, conn: sqlite3.Connection, owners: list[str]) -> None:
    doorbell.unregister(conn, owners)


@operation
def clear_leases(t: SqliteTransport, conn: sqlite3.Connection, now: float) -> None:
    claims.clear_leases(conn, now)
