"""Named operations run together write what they write one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bus.envelope import Envelope
from bus.transport import sqlite_ops as ops
from bus.transport.base import LedgerEntry, MessageState
from bus.transport.sqlite import Publish, SqliteTransport

from .test_sqlite_publish import NOW, queued, run, tables


async def started(path: Path) -> SqliteTransport:
    transport = SqliteTransport(path, poll_interval=0.01)
    await transport.start()
    return transport


def messages() -> list[Envelope]:
    return [Envelope(f"msg-{i}", "orders", {"n": i}, {}, first_seen=NOW) for i in range(4)]


def completions(envs: list[Envelope]) -> list[tuple]:
    """complete() arguments: delivered and filtered, one with children, lines of each kind."""
    out = []
    for i, env in enumerate(envs):
        done = env.evolve(cursor=2, context={"first": {"ok": i}})
        state = MessageState.FILTERED if i == 2 else MessageState.DELIVERED
        kids = [(Envelope(f"child-{i}-{k}", "audit", {"of": i}, {}, first_seen=NOW), NOW + k)
                for k in range(2)] if i == 1 else []
        lines = [LedgerEntry(env.id, "step", NOW + i, flow="orders", step="to: sink",
                             outcome="ok", detail={"i": i}),
                 LedgerEntry(env.id, state.value, NOW + i, flow="orders", attempt=1)]
        out.append((done, NOW + i, state, None, kids, lines))
    return out


def checkpoints(envs: list[Envelope]) -> list[tuple]:
    """checkpoint() arguments: a step done, the message still running; 0-2 ledger lines."""
    return [(env.evolve(cursor=1, context={"first": {"i": i}}), NOW + i, None,
             [LedgerEntry(env.id, "step", NOW + i, flow="orders", outcome="ok")] * (i % 3))
            for i, env in enumerate(envs)]


async def both_ways(tmp_path: Path, op, make_calls) -> list[dict]:
    """The tables after ``op`` ran on the same calls one by one, then (another file) together."""
    contents = []
    for name in ("alone", "together"):
        path = tmp_path / f"{name}.sqlite3"
        t = await started(path)
        try:
            envs = messages()
            await run(t, Publish(t, envs, None, NOW, 0.0, ()).work)
            calls = make_calls(envs)
            if name == "alone":
                await run(t, lambda conn, t=t, cs=calls: [op(t, conn, *c) for c in cs])
            else:
                result = await run(t, lambda conn, t=t, cs=calls: op.together(t, conn, cs))
                assert result == [None] * len(calls)
            contents.append(tables(path))
        finally:
            await t.close()
    return contents


async def test_complete_together_writes_what_one_by_one_writes(tmp_path: Path) -> None:
    """Same states, envelopes, children, ledger lines and backlog counts either way."""
    alone, together = await both_ways(tmp_path, ops.complete, completions)
    assert alone == together
    states = sorted(row[2] for row in together["messages"])
    assert states == ["delivered", "delivered", "delivered", "filtered", "queued", "queued"]
    assert sorted(together["backlog"]) == [("audit", 2), ("orders", 0)]


async def test_checkpoint_together_writes_what_one_by_one_writes(tmp_path: Path) -> None:
    """Checkpoints batched or not: same envelopes (cursor moved on), times and ledger lines."""
    alone, together = await both_ways(tmp_path, ops.checkpoint, checkpoints)
    assert alone == together
    assert all(b'"cursor":1' in row[3] for row in together["messages"])
    assert len(together["ledger"]) == 4 + 3  # 4 'received' lines, then 0 + 1 + 2 + 0 step lines


async def test_endings_waiting_together_share_one_call(tmp_path: Path) -> None:
    """Concurrent complete() calls reach complete_together; each delivery still ends."""
    t = await started(tmp_path / "bus.sqlite3")
    seen: list[int] = []
    original = ops.complete.together

    def spy(context, conn, calls):
        seen.append(len(calls))
        return original(context, conn, calls)

    ops.complete.together = spy
    try:
        envs = [Envelope.new("orders", {"n": i}) for i in range(30)]
        await t.publish(envs)
        ended = asyncio.Queue()

        async def handler(delivery) -> None:
            await delivery.complete(MessageState.DELIVERED, delivery.envelope)
            ended.put_nowait(delivery.envelope.id)

        t.consume("orders", handler, concurrency=30)
        done = {await asyncio.wait_for(ended.get(), 10) for _ in envs}
        for env in envs:
            assert (await t.message(env.id)).state == MessageState.DELIVERED
    finally:
        ops.complete.together = original
        await t.close()
    assert done == {e.id for e in envs}
    assert max(seen) > 1, "no two endings went through complete_together"


async def test_a_shared_file_checks_each_lease(tmp_path: Path) -> None:
    """With a lease owner to check, complete_together declines and changes nothing."""
    t = await started(tmp_path / "bus.sqlite3")
    try:
        envs = messages()
        await run(t, Publish(t, envs, None, NOW, 0.0, ()).work)
        calls = [(*c[:3], "worker-1", *c[4:]) for c in completions(envs)]
        assert await run(t, lambda conn: ops.complete_together(t, conn, calls)) is None
        assert queued(tmp_path / "bus.sqlite3") == 4
    finally:
        await t.close()

