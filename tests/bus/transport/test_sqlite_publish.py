"""Publishes committed together store what the same publishes store one by one."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bus.envelope import Envelope
from bus.transport.base import LedgerEntry
from bus.transport.sqlite import Publish, SqliteTransport
from bus.transport.sqlite_publish import ROWS_PER_STATEMENT, publish_together

NOW = 1_700_000_000.25
WINDOW = 3600.0


async def started(path: Path) -> SqliteTransport:
    transport = SqliteTransport(path, poll_interval=0.01, dedupe_window=WINDOW)
    await transport.start()
    return transport


def jobs_for(t: SqliteTransport, specs: list[tuple[str | None, int, float]]) -> list[Publish]:
    """One Publish per (dedupe key, envelope count, delay); the second has an extra ledger line."""
    out = []
    for i, (key, count, delay) in enumerate(specs):
        envs = [Envelope.new("orders", {"n": i, "k": k}, {"source": "vendor"}).evolve(first_seen=NOW)
                for k in range(count)]
        extra = [LedgerEntry(envs[0].id, "step", NOW, flow="orders", step="s")] if i == 1 else []
        out.append(Publish(t, envs, key, NOW + i * 0.001, delay, extra))
    return out


def tables(path: Path) -> dict[str, list[tuple]]:
    """Every row that matters, ids and times included; ledger order by seq."""
    conn = sqlite3.connect(path)
    try:
        return {
            "messages": conn.execute("SELECT id, flow, state, envelope, available_at, created_at,"
                                     " updated_at, correlation_id FROM messages ORDER BY id").fetchall(),
            "ledger": conn.execute("SELECT message_id, at, kind, flow, step, attempt, outcome,"
                                   " error, detail FROM ledger ORDER BY seq").fetchall(),
            "dedupe": conn.execute("SELECT * FROM dedupe ORDER BY key").fetchall(),
            "backlog": conn.execute("SELECT * FROM backlog").fetchall(),
        }
    finally:
        conn.close()


async def run(t: SqliteTransport, work) -> list:
    """``work(conn)`` in one transaction on the transport's writer thread."""
    return await t.writer.write(work)


def one_by_one(jobs: list[Publish]):
    return lambda conn: [job.work(conn) for job in jobs]


def together(jobs: list[Publish]):
    return lambda conn: publish_together(conn, jobs)


def queued(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM messages WHERE state = 'queued'").fetchone()[0]
    finally:
        conn.close()


CLAIMED = "vendor:evt-held"   # claimed before the batch, still live: its publish is a duplicate
EXPIRED = "vendor:evt-old"    # claimed long ago: the batch takes it over

SPECS = {
    "fresh-keys": [("vendor:a", 1, 0.0), ("vendor:b", 1, 0.0), ("vendor:c", 2, 0.0)],
    "one-duplicate": [("vendor:a", 1, 0.0), (CLAIMED, 1, 0.0), ("vendor:c", 1, 0.0)],
    "expired-claim": [(EXPIRED, 1, 0.0), ("vendor:b", 1, 0.0)],
    "no-keys-and-delays": [(None, 1, 0.0), (None, 3, 5.0), ("vendor:x", 1, 2.5)],
}


@pytest.mark.parametrize("specs", SPECS.values(), ids=SPECS.keys())
async def test_together_stores_what_one_by_one_stores(tmp_path: Path, specs) -> None:
    """Same outcomes, same messages, ledger lines, dedupe claims and backlog counts."""
    results, contents = [], []
    for name in ("alone", "together"):
        path = tmp_path / f"{name}.sqlite3"
        t = await started(path)
        try:
            for key, at in ((CLAIMED, NOW), (EXPIRED, NOW - 2 * WINDOW)):
                held = Envelope("held-" + key[-3:], "orders", {}, {}, first_seen=NOW)
                await run(t, Publish(t, [held], key, at, 0.0, ()).work)
            jobs = jobs_for(t, specs)
            outcome = await run(t, one_by_one(jobs) if name == "alone" else together(jobs))
            ids = {e.id: f"m{i}.{k}" for i, j in enumerate(jobs) for k, e in enumerate(j.envs)}
            results.append(outcome)
            contents.append(_renamed(tables(path), ids))
        finally:
            await t.close()
    assert results[0] == results[1]
    assert contents[0] == contents[1]
    assert contents[1]["messages"], "the batch stored nothing"


def _renamed(rows: dict[str, list[tuple]], ids: dict[str, str]) -> dict[str, list[tuple]]:
    """Envelope ids differ between the two files: name them by position instead."""
    def fix(value):
        if isinstance(value, str | bytes):
            text = value.decode() if isinstance(value, bytes) else value
            for real, name in ids.items():
                text = text.replace(real, name)
            return text
        return value
    return {table: sorted(tuple(fix(v) for v in row) for row in rs) if table != "ledger"
            else [tuple(fix(v) for v in row) for row in rs] for table, rs in rows.items()}


async def test_a_key_twice_in_a_batch_is_left_to_one_by_one(tmp_path: Path) -> None:
    """Which of two equal keys wins depends on order: the batch declines and changes nothing."""
    t = await started(tmp_path / "bus.sqlite3")
    try:
        jobs = jobs_for(t, [("vendor:same", 1, 0.0), ("vendor:same", 1, 0.0)])
        assert await run(t, together(jobs)) is None
        assert queued(tmp_path / "bus.sqlite3") == 0
    finally:
        await t.close()


async def test_batches_past_one_statement_are_split(tmp_path: Path) -> None:
    """More rows than one statement takes are written in several, all of them stored."""
    t = await started(tmp_path / "bus.sqlite3")
    try:
        count = ROWS_PER_STATEMENT + 37
        jobs = jobs_for(t, [(f"vendor:{i}", 1, 0.0) for i in range(count)])
        outcomes = await run(t, together(jobs))
        assert outcomes == [None] * count
        assert queued(tmp_path / "bus.sqlite3") == count
        again = jobs_for(t, [(f"vendor:{i}", 1, 0.0) for i in range(count)])
        dupes = await run(t, together(again))
        assert dupes == [[j.envs[0].id] for j in jobs]  # every key held by the first batch
    finally:
        await t.close()


async def test_concurrent_publishes_share_a_commit_and_keep_their_outcomes(tmp_path: Path) -> None:
    """Publishes waiting together go through the batch path; a duplicate among them is told so."""
    t = await started(tmp_path / "bus.sqlite3")
    calls = []
    original = Publish.work_together

    def spy(conn, jobs):
        calls.append(len(jobs))
        return original(conn, jobs)

    Publish.work_together = staticmethod(spy)
    try:
        first = await t.publish([Envelope.new("orders", {"n": 0})], dedupe_key="vendor:dup")
        envs = [Envelope.new("orders", {"n": i}) for i in range(20)]
        results = await asyncio.gather(
            *(t.publish([e], dedupe_key=f"vendor:{i}") for i, e in enumerate(envs)),
            t.publish([Envelope.new("orders", {"n": 99})], dedupe_key="vendor:dup"))
    finally:
        Publish.work_together = original
        await t.close()
    assert max(calls) > 1, "no batch of publishes went through work_together"
    assert [r.accepted for r in results[:-1]] == [[e.id] for e in envs]
    assert results[-1].duplicate_of == first.accepted
