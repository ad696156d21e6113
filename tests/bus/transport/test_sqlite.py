"""What only the embedded (SQLite) transport promises: restarts, crashes, group commit, write failures."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.envelope import Envelope
from bus.errors import TransportError
from bus.transport import sqlite_store as store
from bus.transport.base import Delivery, MessageState
from bus.transport.sqlite import SqliteTransport

from .conftest import Recorder, complete

ROOT = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("crash_child.py")


async def started(path: Path, **options: object) -> SqliteTransport:
    transport = SqliteTransport(path, poll_interval=0.01, **options)  # type: ignore[arg-type]
    await transport.start()
    return transport


async def test_restart_redelivers_unfinished(tmp_path: Path) -> None:
    """A message in flight at close() stays queued and runs after a restart; finished ones do not."""
    db = tmp_path / "bus.sqlite3"
    first = await started(db)
    done, stuck = Envelope.new("jobs", {"n": "done"}), Envelope.new("jobs", {"n": "stuck"})
    handling = asyncio.Event()

    async def act(d: Delivery) -> None:
        if d.envelope.id == stuck.id:
            handling.set()
            await asyncio.Event().wait()  # never ends: close() must cancel it
        await complete(d)

    rec = Recorder(act)
    first.consume("jobs", rec)
    await first.publish([done, stuck])
    await rec.next()
    await asyncio.wait_for(handling.wait(), 10)
    await first.close(timeout=0.05)

    second = await started(db)
    try:
        assert await second.backlog("jobs") == 1
        again = Recorder(complete)
        second.consume("jobs", again)
        assert (await again.next()).id == stuck.id
    finally:
        await second.close()


async def test_restart_keeps_scheduled_retry(tmp_path: Path) -> None:
    """A retry scheduled before a restart keeps its available_at and runs once it is due."""
    db = tmp_path / "bus.sqlite3"
    first = await started(db)
    env = Envelope.new("jobs", {})

    async def later(d: Delivery) -> None:
        await d.retry(d.envelope.evolve(attempt=2, cursor=1), 3600)

    rec = Recorder(later)
    first.consume("jobs", rec)
    await first.publish([env])
    await rec.next()
    before = await first.message(env.id)
    await first.close()
    assert before is not None and before.available_at > time.time() + 3000

    second = await started(db, clock=lambda: time.time() + 7200)  # the hour has passed
    try:
        after = await second.message(env.id)
        assert after is not None and after.available_at == before.available_at
        again = Recorder(complete)
        second.consume("jobs", again)
        got = await again.next()
        assert (got.id, got.attempt, got.cursor) == (env.id, 2, 1)
    finally:
        await second.close()


async def test_crash_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """After SIGKILL of a publishing process, every id it saw acknowledged is stored and runs."""
    db = tmp_path / "crash.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[str] = []
    try:
        while len(acked) < 300:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            acked.append(line.decode().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert len(acked) >= 300, f"the child stopped early: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    acked += [line for line in out.decode().splitlines() if len(line) == 26]

    transport = await started(db)
    try:
        records = await asyncio.gather(*(transport.message(mid) for mid in acked))
        lost = [mid for mid, r in zip(acked, records, strict=True) if r is None]
        assert lost == []
        assert {r.state for r in records if r is not None} == {MessageState.QUEUED}
        backlog = await transport.backlog("crash")
        assert backlog >= len(acked)
        rec = Recorder(complete)
        transport.consume("crash", rec, concurrency=64)
        delivered = {e.id for e in await rec.take(backlog)}
        assert set(acked) <= delivered
    finally:
        await transport.close()


async def test_group_commit_batches_concurrent_publishes(tmp_path: Path) -> None:
    """50 concurrent publishes are stored with fewer commits than publishes."""
    transport = await started(tmp_path / "bus.sqlite3")
    try:
        commits, jobs = transport.stats["commits"], transport.stats["jobs"]
        envs = [Envelope.new("bulk", {"i": i}) for i in range(50)]
        await asyncio.gather(*(transport.publish([e]) for e in envs))
        assert transport.stats["jobs"] - jobs == 50
        assert transport.stats["commits"] - commits < 50
        assert len(await transport.search(flow="bulk", limit=100)) == 50
    finally:
        await transport.close()


def small_disk(path: Path) -> sqlite3.Connection:
    """A connection whose database may not grow past 40 pages: a full disk, for real."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA max_page_count = 40")
    return conn


async def test_failed_write_surfaces_as_transport_error(tmp_path: Path) -> None:
    """A write SQLite refuses (disk full) fails that publish with TransportError and stores nothing of it."""
    transport = await started(tmp_path / "bus.sqlite3", connect=small_disk)
    try:
        big = Envelope.new("bulk", {"blob": "x" * 400_000})
        small = [Envelope.new("bulk", {"i": i}) for i in range(4)]
        # one batch; SQLite drops the whole transaction on a full disk, the others must survive it
        results = await asyncio.gather(
            *(transport.publish([e]) for e in small[:2]),
            transport.publish([big]),
            *(transport.publish([e]) for e in small[2:]),
            return_exceptions=True,
        )
        failed = results.pop(2)
        assert isinstance(failed, TransportError) and "full" in str(failed)
        assert [r.accepted for r in results] == [[e.id] for e in small]  # type: ignore[union-attr]
        assert await transport.message(big.id) is None
        assert await transport.backlog() == 4
        later = Envelope.new("bulk", {})
        assert (await transport.publish([later])).accepted == [later.id]  # the writer lives on
    finally:
        await transport.close()


async def test_dedupe_key_expires_after_window(tmp_path: Path) -> None:
    """A dedupe key is forgotten once its window has passed."""
    now = [1_000_000.0]
    transport = await started(tmp_path / "bus.sqlite3", dedupe_window=60, clock=lambda: now[0])
    try:
        assert (await transport.publish([Envelope.new("calls", {})], dedupe_key="k")).accepted
        now[0] += 30
        assert (await transport.publish([Envelope.new("calls", {})], dedupe_key="k")).duplicate_of
        now[0] += 31
        assert (await transport.publish([Envelope.new("calls", {})], dedupe_key="k")).accepted
    finally:
        await transport.close()


async def test_expired_dedupe_key_is_reused_before_the_sweep(tmp_path: Path) -> None:
    """An expired key still on disk (the periodic sweep has not run yet) takes the new ids."""
    now = [1_000_000.0]
    transport = await started(tmp_path / "bus.sqlite3", dedupe_window=10, clock=lambda: now[0])
    try:
        first, second, third = (Envelope.new("calls", {"n": n}) for n in range(3))
        assert (await transport.publish([first], dedupe_key="k")).accepted == [first.id]
        now[0] += 11  # past the window, well before the sweep (every 60 s)
        assert (await transport.publish([second], dedupe_key="k")).accepted == [second.id]
        now[0] += 5  # inside the new claim's window: a duplicate of the second, not the first
        assert (await transport.publish([third], dedupe_key="k")).duplicate_of == [second.id]
    finally:
        await transport.close()


async def test_duplicate_is_written_to_the_first_messages_ledger(tmp_path: Path) -> None:
    """A refused duplicate leaves a 'duplicate' line, with the key and the rejected ids, on the first."""
    transport = await started(tmp_path / "bus.sqlite3")
    try:
        first, again = Envelope.new("calls", {}), Envelope.new("calls", {})
        await transport.publish([first], dedupe_key="vendor:evt-1")
        await transport.publish([again], dedupe_key="vendor:evt-1")
        lines = [e for e in await transport.history(first.id) if e.kind == "duplicate"]
        assert [e.detail for e in lines] == [{"dedupe_key": "vendor:evt-1", "rejected": [again.id]}]
        assert await transport.message(again.id) is None
    finally:
        await transport.close()


@pytest.mark.parametrize(
    ("options", "error"),
    [({"sync": "off"}, "sync='off'")],
    ids=["bad-sync"],
)
def test_rejects_bad_options(tmp_path: Path, options: dict, error: str) -> None:
    """Constructor options are checked and the error names the option."""
    with pytest.raises(ValueError, match=error):
        SqliteTransport(tmp_path / "x", **options)


async def test_publish_before_start_is_refused(tmp_path: Path) -> None:
    """publish() on a transport that was not started raises TransportError saying so."""
    transport = SqliteTransport(tmp_path / "bus.sqlite3")
    with pytest.raises(TransportError, match="start"):
        await transport.publish([Envelope.new("x", {})])


async def test_republishing_an_id_is_refused(tmp_path: Path) -> None:
    """Publishing an envelope whose id is already stored fails alone and says why."""
    transport = await started(tmp_path / "bus.sqlite3")
    try:
        env = Envelope.new("x", {})
        await transport.publish([env])
        other = Envelope.new("x", {})
        results = await asyncio.gather(
            transport.publish([env]), transport.publish([other]), return_exceptions=True
        )
        assert isinstance(results[0], TransportError) and "already stored" in str(results[0])
        assert results[1].accepted == [other.id]  # type: ignore[union-attr]
        assert await transport.backlog("x") == 2
    finally:
        await transport.close()


async def test_pruning_is_bounded_per_pass_and_catches_up(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A housekeeping pass deletes at most PRUNE_BATCH finished messages (it runs inside an
    ingress commit); while it is behind, the next pass comes a second later, not a minute."""
    monkeypatch.setattr(store, "PRUNE_BATCH", 2)
    now = [1_000_000.0]
    transport = await started(tmp_path / "bus.sqlite3", retention=3600, clock=lambda: now[0])
    try:
        done = [Envelope.new("jobs", {"n": i}) for i in range(5)]
        recorder = Recorder(complete)
        transport.consume("jobs", recorder)
        await transport.publish(done)
        await recorder.take(5)

        async def kept() -> int:
            await transport.publish([Envelope.new("other", {})])  # housekeeping runs with writes
            return sum([await transport.message(e.id) is not None for e in done])

        now[0] += 3700
        assert await kept() == 3  # the oldest two
        assert await kept() == 3  # the same second: no second pass yet
        now[0] += 1.0
        assert await kept() == 1
        now[0] += 1.0
        assert await kept() == 0
    finally:
        await transport.close()


async def test_finished_messages_are_pruned_after_retention(tmp_path: Path) -> None:
    """Delivered messages and their ledger are forgotten after the retention; dead letters stay."""
    now = [1_000_000.0]
    transport = await started(tmp_path / "bus.sqlite3", retention=3600, clock=lambda: now[0])
    try:
        done, dead = Envelope.new("jobs", {"n": 1}), Envelope.new("jobs", {"n": 2})

        async def act(d: Delivery) -> None:
            if d.envelope.id == done.id:
                await complete(d)
            else:
                await d.dead(d.envelope, "boom", ["boom"])

        recorder = Recorder(act)
        transport.consume("jobs", recorder)
        await transport.publish([done, dead])
        await recorder.take(2)
        now[0] += 1800
        await transport.publish([Envelope.new("other", {})])  # housekeeping runs with writes
        assert (await transport.message(done.id)).state == MessageState.DELIVERED
        now[0] += 3600
        await transport.publish([Envelope.new("other", {})])
        assert await transport.message(done.id) is None
        assert await transport.history(done.id) == []
        assert (await transport.message(dead.id)).state == MessageState.DEAD
    finally:
        await transport.close()
