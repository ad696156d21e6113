"""What the embedded transport promises when several processes share its file: each message
runs in one process at a time, a dead process's messages run again, the bound holds for all."""

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
from bus.errors import BackpressureError, LeaseLostError, TransportError
from bus.transport.base import Delivery, MessageState
from bus.transport.sqlite import SqliteTransport
from bus.transport.sqlite_shared import WORKER_ID_ENV

from .conftest import Recorder, complete

ROOT = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("shared_child.py")


async def shared(path: Path, **options: object) -> SqliteTransport:
    transport = SqliteTransport(path, shared=True, **options)  # type: ignore[arg-type]
    await transport.start()
    return transport


async def test_two_processes_run_each_message_once(tmp_path: Path) -> None:
    """Two consumers sharing one file split the work between them; no message runs twice."""
    db = tmp_path / "bus.sqlite3"
    a, b = await shared(db), await shared(db)
    ran: dict[str, list[str]] = {}

    def worker(name: str):  # noqa: ANN202 - a handler
        async def act(d: Delivery) -> None:
            ran.setdefault(d.envelope.id, []).append(name)
            await asyncio.sleep(0.005)  # long enough that both processes have work in hand
            await complete(d)
        return act

    rec_a, rec_b = Recorder(worker("a")), Recorder(worker("b"))
    a.consume("jobs", rec_a, concurrency=4)
    b.consume("jobs", rec_b, concurrency=4)
    envs = [Envelope.new("jobs", {"n": i}) for i in range(200)]
    for lo in range(0, 200, 20):
        await (a if lo % 40 else b).publish(envs[lo:lo + 20])
    try:
        async with asyncio.timeout(20):
            while len(ran) < 200 or await a.backlog("jobs"):
                await asyncio.sleep(0.02)
        assert sorted(ran) == sorted(e.id for e in envs)
        assert all(len(names) == 1 for names in ran.values()), "a message ran twice"
        shares = {name: sum(n == [name] for n in ran.values()) for name in "ab"}
        assert shares["a"] > 0 and shares["b"] > 0, shares
        states = {(await a.message(e.id)).state for e in envs}
        assert states == {MessageState.DELIVERED}
    finally:
        await a.close()
        await b.close()


async def _hold_in_child(db: Path, lease: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The child starts while this loop runs: it writes through this process (the host)."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), str(lease)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
    assert line == b"ready\n", proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    return proc


async def _claimed(proc: subprocess.Popen) -> str:
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)  # type: ignore[union-attr]
    assert line.startswith(b"claimed "), line
    return line.split()[1].decode()


async def test_a_killed_process_messages_run_after_its_lease(tmp_path: Path) -> None:
    """A process SIGKILLed with a message in hand: another runs it once the lease has passed."""
    db = tmp_path / "bus.sqlite3"
    ours = await shared(db)
    env = Envelope.new("held", {})
    child = await _hold_in_child(db, lease=1.0)
    try:
        await ours.publish([env])
        assert await _claimed(child) == env.id
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        record = await ours.message(env.id)
        assert record is not None and record.state == MessageState.QUEUED
        rec = Recorder(complete)
        ours.consume("held", rec)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await rec.next()).id == env.id
        assert loop.time() - started < 5
        assert (await ours.message(env.id)).state == MessageState.DELIVERED
    finally:
        child.kill()
        child.wait(10)
        await ours.close()


async def test_release_runs_a_dead_workers_messages_at_once(tmp_path: Path) -> None:
    """release(owner), as a supervisor calls it for a worker it saw die, makes its messages due now."""
    db = tmp_path / "bus.sqlite3"
    ours = await shared(db)
    env = Envelope.new("held", {})
    child = await _hold_in_child(db, lease=3600.0, env={WORKER_ID_ENV: "worker-7"})
    try:
        await ours.publish([env])
        assert await _claimed(child) == env.id
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        rec = Recorder(complete)
        ours.consume("held", rec)
        await asyncio.sleep(0.2)
        assert rec.seen.empty(), "a leased message ran before its lease was given back"
        assert await ours.release("worker-7") == 1
        assert (await rec.next()).id == env.id
    finally:
        child.kill()
        child.wait(10)
        await ours.close()


async def test_an_ending_after_the_lease_passed_is_refused(tmp_path: Path) -> None:
    """A process whose lease was given to another cannot record an outcome; the other's stands."""
    db = tmp_path / "bus.sqlite3"
    slow, other = await shared(db), await shared(db)
    env = Envelope.new("jobs", {})
    holding, go_on, refused = asyncio.Event(), asyncio.Event(), []

    async def late(d: Delivery) -> None:
        holding.set()
        await go_on.wait()
        try:
            await complete(d)
        except LeaseLostError as exc:
            refused.append(exc)
            raise

    slow.consume("jobs", Recorder(late), concurrency=1)
    await slow.publish([env])
    try:
        await asyncio.wait_for(holding.wait(), 10)
        assert await other.release(slow.owner) == 1  # as if slow had been seen dying
        rec = Recorder(complete)
        other.consume("jobs", rec)
        assert (await rec.next()).id == env.id
        go_on.set()
        async with asyncio.timeout(10):
            while not refused:
                await asyncio.sleep(0.01)
        delivered = [e for e in await other.history(env.id) if e.kind == "delivered"]
        assert len(delivered) == 1
        assert (await other.message(env.id)).state == MessageState.DELIVERED
    finally:
        await slow.close()
        await other.close()


async def test_renewals_keep_a_long_message_with_its_process(tmp_path: Path) -> None:
    """A handler running three leases long keeps its message: the lease is renewed meanwhile."""
    db = tmp_path / "bus.sqlite3"
    busy, idle = await shared(db, lease=0.3), await shared(db, lease=0.3)
    env = Envelope.new("jobs", {})
    runs: list[str] = []

    def handler(name: str, seconds: float):  # noqa: ANN202 - a handler
        async def act(d: Delivery) -> None:
            runs.append(name)
            await asyncio.sleep(seconds)
            await complete(d)
        return act

    rec = Recorder(handler("busy", 1.0))
    busy.consume("jobs", rec, concurrency=1)
    await busy.publish([env])
    try:
        await asyncio.sleep(0.1)  # busy has it
        idle.consume("jobs", Recorder(handler("idle", 0)))
        assert (await rec.next()).id == env.id
        await asyncio.sleep(0.3)
        assert runs == ["busy"]
        assert (await idle.message(env.id)).state == MessageState.DELIVERED
    finally:
        await busy.close()
        await idle.close()


async def test_backlog_bound_holds_across_processes(tmp_path: Path) -> None:
    """The bound counts what every process published, and both see the same backlog."""
    db = tmp_path / "bus.sqlite3"
    a, b = await shared(db, backlog_limit=5), await shared(db, backlog_limit=5)
    try:
        await a.publish([Envelope.new("x", {}) for _ in range(3)])
        await b.publish([Envelope.new("y", {}) for _ in range(2)])
        with pytest.raises(BackpressureError, match="backlog is 5 messages, the bound is 5"):
            await b.publish([Envelope.new("x", {})])
        with pytest.raises(BackpressureError):
            await a.publish([Envelope.new("y", {})])
        assert [await a.backlog(), await a.backlog("x"), await b.backlog("y")] == [5, 3, 2]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("first_shared", [False, True], ids=["alone-then-shared", "shared-then-alone"])
async def test_alone_and_shared_processes_exclude_each_other(tmp_path: Path, first_shared: bool) -> None:
    """A process alone on the file and processes sharing it cannot open it at the same time."""
    db = tmp_path / "bus.sqlite3"
    first = SqliteTransport(db, shared=first_shared)
    await first.start()
    try:
        second = SqliteTransport(db, shared=not first_shared)
        with pytest.raises(TransportError, match="bus.sqlite3"):
            await second.start()
    finally:
        await first.close()
    again = SqliteTransport(db, shared=not first_shared)  # the lock went with the first one
    await again.start()
    await again.close()


V1_SCHEMA = """
CREATE TABLE messages (id TEXT PRIMARY KEY, flow TEXT NOT NULL, state TEXT NOT NULL,
    envelope BLOB NOT NULL, available_at REAL NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, correlation_id TEXT, error TEXT);
CREATE TABLE ledger (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, at REAL NOT NULL,
    kind TEXT NOT NULL, flow TEXT NOT NULL DEFAULT '', step TEXT, attempt INTEGER, outcome TEXT,
    error TEXT, detail BLOB);
CREATE TABLE dedupe (key TEXT PRIMARY KEY, message_ids BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE dead (message_id TEXT PRIMARY KEY, flow TEXT NOT NULL, step TEXT, error TEXT NOT NULL,
    error_chain BLOB NOT NULL, dead_at REAL NOT NULL);
PRAGMA user_version = 1;
"""


@pytest.mark.parametrize("share", [False, True], ids=["alone", "shared"])
async def test_a_version_1_file_is_upgraded(tmp_path: Path, share: bool) -> None:
    """A file of the previous schema opens: its queued messages are counted and delivered."""
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    waiting = [Envelope.new("old", {"n": i}) for i in range(3)]
    conn.executemany(
        "INSERT INTO messages VALUES (?, 'old', ?, ?, 0, 0, 0, NULL, NULL)",
        [(e.id, "queued" if i < 2 else "delivered", e.to_json()) for i, e in enumerate(waiting)],
    )
    conn.commit()
    conn.close()
    transport = SqliteTransport(db, shared=share)
    await transport.start()
    try:
        assert await transport.backlog("old") == 2
        rec = Recorder(complete)
        transport.consume("old", rec)
        assert {e.id for e in await rec.take(2)} == {e.id for e in waiting[:2]}
        async with asyncio.timeout(10):
            while await transport.backlog():
                await asyncio.sleep(0.01)
    finally:
        await transport.close()


async def test_a_publish_rings_the_consumers_doorbell(tmp_path: Path) -> None:
    """A consumer that would look at the file only every 30 s runs another process's message
    at once: the publisher rang its doorbell. A bell nobody answers is struck off the list."""
    db = tmp_path / "bus.sqlite3"
    consumer = await shared(db, poll_interval=30.0)
    producer = await shared(db, poll_interval=30.0)
    rec = Recorder(complete)
    consumer.consume("jobs", rec)
    await asyncio.sleep(0.1)  # its bell is registered
    await producer.writer.write(lambda conn: conn.execute(
        "INSERT INTO doorbells VALUES ('gone', 'tieline-bell-nobody-listens')"))
    try:
        for _ in range(3):
            env = Envelope.new("jobs", {})
            loop = asyncio.get_running_loop()
            sent = loop.time()
            await producer.publish([env])
            assert (await rec.next()).id == env.id
            assert loop.time() - sent < 2.0
        owners = await producer.reader.read(
            lambda conn: [r[0] for r in conn.execute("SELECT owner FROM doorbells")])
        assert owners == [consumer.owner]
    finally:
        await consumer.close()
        await producer.close()
    left = sqlite3.connect(db).execute("SELECT count(*) FROM doorbells").fetchone()[0]
    assert left == 0  # each took its own bell down on close


OPEN_AT = """
import asyncio, sys, time
from pathlib import Path
from bus.transport.sqlite import SqliteTransport
async def main():
    transport = SqliteTransport(Path(sys.argv[1]), shared=True)
    while time.time() < float(sys.argv[2]):
        pass
    await transport.start()
    await transport.close()
asyncio.run(main())
"""


async def test_processes_starting_together_on_a_new_file_all_open_it(tmp_path: Path) -> None:
    """Four processes opening one new file at the same instant all start (none is refused
    while another switches the file to WAL)."""
    for attempt in range(5):
        db = tmp_path / f"new{attempt}.sqlite3"
        at = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(db), str(at)],
                                  stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
                 for _ in range(4)]
        errors = [p.communicate(timeout=30)[1].decode()[-500:] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
