"""The embedded queue past its window: messages held by id and read back, in order, once each."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from bus.envelope import Envelope
from bus.transport import sqlite_scheduler
from bus.transport.base import Delivery
from bus.transport.sqlite import SqliteTransport
from bus.transport.sqlite_scheduler import FlowQueue

from .conftest import Recorder, complete


class FileOfEnvelopes:
    """A loader over a dict standing in for the file; records each read, can fail reads."""

    def __init__(self, envelopes: list[Envelope], failures: int = 0):
        self.stored = {e.id: e for e in envelopes}
        self.reads: list[list[str]] = []
        self.failures = failures

    async def __call__(self, ids: Sequence[str]) -> dict[str, tuple[Envelope, int]]:
        self.reads.append(list(ids))
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        return {i: (self.stored[i], len(self.stored[i].to_json())) for i in ids if i in self.stored}


def held_whole(queue: FlowQueue) -> int:
    items = [*queue._ready, *(item for _, _, item in queue._timers)]
    return sum(isinstance(item, Envelope) for item in items)


async def take(queue: FlowQueue, n: int) -> list[str]:
    return [(await asyncio.wait_for(queue.get(), 5)).id for _ in range(n)]


async def test_past_the_window_messages_are_held_by_id_and_come_back_in_order() -> None:
    envs = [Envelope.new("jobs", {"n": i}) for i in range(10)]
    load = FileOfEnvelopes(envs)
    queue = FlowQueue(time.time, 0.01, load, window=3)
    for e in envs:
        queue.put(e, 0)
    assert held_whole(queue) == 3 and len(queue) == 10
    assert await take(queue, 10) == [e.id for e in envs]
    assert load.reads == [[e.id for e in envs[3:]]]  # one read for the seven held by id


async def test_past_the_byte_budget_large_messages_are_held_by_id() -> None:
    """Few large bodies fill the window's bytes long before its count: the rest wait by id,
    and the budget is given back as messages are taken."""
    big = [Envelope.new("jobs", {"n": i, "text": "x" * 1000}) for i in range(6)]
    load = FileOfEnvelopes(big)
    queue = FlowQueue(time.time, 0.01, load, window=100, window_bytes=2500)
    for e in big[:5]:
        queue.put(e, 0)
    assert held_whole(queue) == 2  # 2 × ~1,020 bytes fit in 2,500, a third does not
    assert await take(queue, 2) == [big[0].id, big[1].id]
    assert queue._held_bytes == 0
    queue.put(big[5], 0)  # room again, but it queues behind the three ids
    assert held_whole(queue) == 1
    assert await take(queue, 4) == [e.id for e in big[2:]]
    assert load.reads == [[e.id for e in big[2:5]]]
    assert (queue._held, queue._held_bytes, queue._sizes) == (0, 0, {})


async def test_one_message_larger_than_the_byte_budget_is_still_held_whole() -> None:
    """An empty window takes any one message: a lone large message runs without a read back."""
    huge = Envelope.new("jobs", {"text": "x" * 5000})
    load = FileOfEnvelopes([huge])
    queue = FlowQueue(time.time, 0.01, load, window=100, window_bytes=1000)
    queue.put(huge, 0)
    assert held_whole(queue) == 1
    assert await take(queue, 1) == [huge.id] and load.reads == []


async def test_small_messages_fill_the_window_by_count_first() -> None:
    envs = [Envelope.new("jobs", {"n": i}) for i in range(10)]
    queue = FlowQueue(time.time, 0.01, FileOfEnvelopes(envs), window=4)
    for e in envs:
        queue.put(e, 0)
    assert held_whole(queue) == 4
    assert queue._held_bytes == sum(len(orjson.dumps(e.body)) for e in envs[:4])


async def test_a_message_held_whole_behind_ids_keeps_its_place() -> None:
    """Room frees up as messages are taken, so a later message is held whole again, behind
    ids that came before it: the ids must still run first."""
    envs = [Envelope.new("jobs", {"n": i}) for i in range(6)]
    queue = FlowQueue(time.time, 0.01, FileOfEnvelopes(envs), window=2)
    for e in envs[:5]:
        queue.put(e, 0)
    assert await take(queue, 2) == [envs[0].id, envs[1].id]
    queue.put(envs[5], 0)  # held whole: only ids are left in the queue
    assert held_whole(queue) == 1
    assert await take(queue, 4) == [e.id for e in envs[2:]]


async def test_reads_back_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_scheduler, "LOAD_BATCH", 4)
    envs = [Envelope.new("jobs", {"n": i}) for i in range(10)]
    load = FileOfEnvelopes(envs)
    queue = FlowQueue(time.time, 0.01, load, window=0)
    for e in envs:
        queue.put(e, 0)
    assert held_whole(queue) == 0
    assert await take(queue, 10) == [e.id for e in envs]
    assert [len(r) for r in load.reads] == [4, 4, 2]


async def test_a_scheduled_message_held_by_id_runs_when_due() -> None:
    now = [1000.0]
    soon, later = Envelope.new("jobs", {"n": 1}), Envelope.new("jobs", {"n": 2})
    queue = FlowQueue(lambda: now[0], 0.01, FileOfEnvelopes([soon, later]), window=0)
    queue.put(later, 1060)
    queue.put(soon, 1030)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nothing due yet
    now[0] = 1031
    assert (await asyncio.wait_for(waiting, 5)).id == soon.id
    now[0] = 1061
    assert (await asyncio.wait_for(queue.get(), 5)).id == later.id


async def test_an_id_no_longer_queued_in_the_file_is_reported_and_skipped() -> None:
    envs = [Envelope.new("jobs", {"n": i}) for i in range(4)]
    load = FileOfEnvelopes(envs)
    del load.stored[envs[1].id]
    lost: list[str] = []
    queue = FlowQueue(time.time, 0.01, load, window=0, lost=lost.append)
    for e in envs:
        queue.put(e, 0)
    assert await take(queue, 3) == [envs[0].id, envs[2].id, envs[3].id]
    assert lost == [envs[1].id]


async def test_a_failed_read_back_keeps_the_ids_and_tries_again() -> None:
    envs = [Envelope.new("jobs", {"n": i}) for i in range(3)]
    load = FileOfEnvelopes(envs, failures=2)
    queue = FlowQueue(time.time, 0.01, load, window=0)
    for e in envs:
        queue.put(e, 0)
    assert await take(queue, 3) == [e.id for e in envs]
    assert len(load.reads) == 3 and all(r == [e.id for e in envs] for r in load.reads)


async def test_without_a_loader_every_message_is_held_whole() -> None:
    envs = [Envelope.new("jobs", {"n": i}) for i in range(5)]
    queue = FlowQueue(time.time, 0.01, window=1)
    for e in envs:
        queue.put(e, 0)
    assert held_whole(queue) == 5
    assert await take(queue, 5) == [e.id for e in envs]


async def test_a_restart_with_a_backlog_past_the_window_runs_each_message_once_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport end to end: a backlog bigger than the window, a scheduled retry among it,
    a restart (which queues every message by id), then each one delivered once, in order."""
    monkeypatch.setattr(sqlite_scheduler, "WINDOW", 5)
    monkeypatch.setattr(sqlite_scheduler, "LOAD_BATCH", 7)
    db = tmp_path / "bus.sqlite3"
    first = SqliteTransport(db, poll_interval=0.01)
    await first.start()
    envs = [Envelope.new("jobs", {"n": i}) for i in range(40)]
    for e in envs:
        await first.publish([e])
    assert held_whole(first.queues._queue("jobs")) == 5  # the other 35 by id
    retried = asyncio.Event()

    async def retry_first(d: Delivery) -> None:
        await d.retry(d.envelope.evolve(attempt=2), 0.2)
        retried.set()
        await asyncio.Event().wait()  # hold the slot: nothing else is taken before close

    first.consume("jobs", retry_first, concurrency=1)
    await asyncio.wait_for(retried.wait(), 5)
    await first.close(timeout=0.05)

    second = SqliteTransport(db, poll_interval=0.01)
    await second.start()
    try:
        assert await second.backlog("jobs") == 40
        assert held_whole(second.queues._queue("jobs")) == 0  # a restart reads ids only
        rec = Recorder(complete)
        second.consume("jobs", rec, concurrency=1)
        got = [await rec.next() for _ in range(40)]
        assert sorted(e.id for e in got) == sorted(e.id for e in envs)  # each once
        assert [e.id for e in got if e.id != envs[0].id] == [e.id for e in envs[1:]]
        assert next(e for e in got if e.id == envs[0].id).attempt == 2  # the retried envelope
        assert await second.backlog("jobs") == 0
    finally:
        await second.close()


async def test_a_publish_counts_the_bytes_it_stored_against_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport hands the queue each message's stored size (the JSON it wrote), so the
    budget is in the file's bytes, alone or in a batch, and large messages past it wait by id."""
    monkeypatch.setattr(sqlite_scheduler, "WINDOW_BYTES", 30_000)
    db = tmp_path / "bus.sqlite3"
    transport = SqliteTransport(db, poll_interval=0.01)
    await transport.start()
    envs = [Envelope.new("jobs", {"n": i, "text": "x" * 10_000}) for i in range(5)]
    await transport.publish(envs[:1])
    await asyncio.gather(*(transport.publish([e]) for e in envs[1:]))  # one batch
    queue = transport.queues._queue("jobs")
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT id, length(envelope) FROM messages"))
    assert held_whole(queue) == 2  # 2 × ~10 KB fit in 30,000 bytes, a third does not
    assert queue._sizes == {e.id: stored[e.id] for e in envs[:2]}
    got: list[str] = []

    async def record(d: Delivery) -> None:
        got.append(d.envelope.id)
        await complete(d)

    transport.consume("jobs", record, concurrency=1)
    for _ in range(200):
        if len(got) == 5:
            break
        await asyncio.sleep(0.02)
    await transport.close()
    assert got == [e.id for e in envs]
