"""The transport contract: every engine in conftest.ENGINES must pass these."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from bus.envelope import CORRELATION_ID, Envelope
from bus.errors import BackpressureError, TransportError
from bus.transport.base import Delivery, LedgerEntry, MessageState, Transport

from .conftest import MakeTransport, Recorder, complete


def entry(env: Envelope, kind: str, **kw: object) -> LedgerEntry:
    return LedgerEntry(env.id, kind, time.time(), flow=env.flow, **kw)  # type: ignore[arg-type]


async def test_publish_consume_complete_delivers(transport: Transport) -> None:
    """A published envelope reaches the consumer of its flow and ends DELIVERED."""
    env = Envelope.new("orders", {"n": 1})
    result = await transport.publish([env])
    assert result.accepted == [env.id] and result.duplicate_of is None
    rec = Recorder(complete)
    transport.consume("orders", rec)
    got = await rec.next()
    assert (got.id, got.body) == (env.id, {"n": 1})
    record = await transport.message(env.id)
    assert record is not None and record.state is MessageState.DELIVERED
    assert await transport.backlog() == 0


async def test_published_before_consume_is_kept(transport: Transport) -> None:
    """Messages published before consume() is called for their flow are delivered once it is."""
    envs = [Envelope.new("late", {"i": i}) for i in range(3)]
    await transport.publish(envs)
    await asyncio.sleep(0.05)  # nobody consumes 'late' yet: they must wait, not vanish
    rec = Recorder(complete)
    transport.consume("late", rec)
    assert sorted(e.id for e in await rec.take(3)) == sorted(e.id for e in envs)


async def test_ledger_history_in_order(transport: Transport) -> None:
    """history() lists received, the handed entries and the ending, in the order written."""
    env = Envelope.new("orders", {})

    async def act(d: Delivery) -> None:
        e = d.envelope
        await d.checkpoint(e.evolve(cursor=1), [entry(e, "step", step="steps[0]", outcome="ok")])
        await d.complete(MessageState.DELIVERED, e.evolve(cursor=2), [entry(e, "delivered")])

    await transport.publish([env], entries=[entry(env, "note")])
    rec = Recorder(act)
    transport.consume("orders", rec)
    await rec.next()
    kinds = [(h.kind, h.outcome) for h in await transport.history(env.id)]
    assert kinds == [("received", None), ("note", None), ("step", "ok"), ("delivered", None)]


async def test_retry_redelivers_new_envelope(transport: Transport) -> None:
    """retry(env, delay) runs the new envelope again: cursor, context and attempt as handed."""
    env = Envelope.new("orders", {"x": 1})

    async def act(d: Delivery) -> None:
        e = d.envelope
        if e.attempt == 1:
            again = e.evolve(cursor=2, attempt=2, context={"ticket": {"id": 7}})
            await d.retry(again, 0.05, [entry(e, "step", outcome="retry", error="503")])
        else:
            await complete(d)

    rec = Recorder(act)
    transport.consume("orders", rec)
    await transport.publish([env])
    first, second = await rec.take(2)
    assert (first.cursor, first.attempt) == (0, 1)
    assert (second.cursor, second.attempt, second.context) == (2, 2, {"ticket": {"id": 7}})
    assert second.id == env.id


async def test_checkpoint_persists_cursor(transport: Transport) -> None:
    """checkpoint() stores the new envelope durably before the delivery ends."""
    env = Envelope.new("orders", {})
    stored: list[int] = []

    async def act(d: Delivery) -> None:
        await d.checkpoint(d.envelope.evolve(cursor=3, context={"a": 1}))
        record = await transport.message(d.envelope.id)
        assert record is not None
        stored.append(record.envelope.cursor)
        assert record.state is MessageState.QUEUED
        await complete(d)

    rec = Recorder(act)
    transport.consume("orders", rec)
    await transport.publish([env])
    await rec.next()
    assert stored == [3]


async def _kill(transport: Transport, flow: str) -> Envelope:
    """Publish one message on ``flow`` and have it fail once, then die."""
    env = Envelope.new(flow, {"phone": "bad"})

    async def act(d: Delivery) -> None:
        e = d.envelope
        if e.attempt == 1:
            await d.retry(
                e.evolve(attempt=2),
                0,
                [entry(e, "step", step="steps[1]", attempt=1, outcome="retry", error="timeout")],
            )
        else:
            await d.dead(
                e,
                "422 invalid phone",
                ["PermanentError: 422 invalid phone", "ValueError"],
                [
                    entry(
                        e,
                        "step",
                        step="steps[1]",
                        attempt=2,
                        outcome="fail",
                        error="422 invalid phone",
                    )
                ],
            )

    rec = Recorder(act)
    transport.consume(flow, rec)
    await transport.publish([env])
    await rec.take(2)
    return env


async def test_dead_letter_has_error_chain_and_attempts(transport: Transport) -> None:
    """dead() moves the message to the DLQ with its error chain and every step attempt."""
    env = await _kill(transport, "sms")
    [letter] = await transport.dead_letters(flow="sms")
    assert (letter.message_id, letter.error, letter.step) == (
        env.id,
        "422 invalid phone",
        "steps[1]",
    )
    assert letter.error_chain == ["PermanentError: 422 invalid phone", "ValueError"]
    assert [(a.attempt, a.outcome) for a in letter.attempts] == [(1, "retry"), (2, "fail")]
    assert (await transport.dead_letter(env.id)) == letter
    assert await transport.dead_letters(flow="other") == []
    record = await transport.message(env.id)
    assert record is not None and record.state is MessageState.DEAD
    assert await transport.backlog("sms") == 0


async def test_replay_delivers_again(make_transport: MakeTransport) -> None:
    """replay() queues a dead letter again with attempt 1; a message that is not dead is refused."""
    transport = await make_transport()
    env = Envelope.new("sms", {})
    rec = Recorder(lambda d: d.dead(d.envelope.evolve(cursor=1, attempt=3), "boom", ["boom"]))
    transport.consume("sms", rec)
    await transport.publish([env])
    await rec.next()
    assert await transport.replay(env.id) is True
    again = await rec.next()
    assert (again.id, again.cursor, again.attempt) == (env.id, 1, 1)  # then it dies again
    assert "replayed" in [h.kind for h in await transport.history(env.id)]
    assert await transport.replay("01NOSUCHMESSAGE000000000000") is False


async def test_replay_refuses_a_live_message(transport: Transport) -> None:
    """replay() of a queued (not dead) message returns False and changes nothing."""
    env = Envelope.new("idle", {})
    await transport.publish([env])
    assert await transport.replay(env.id) is False
    assert await transport.backlog("idle") == 1


async def test_purge_removes_dead_letters(transport: Transport) -> None:
    """purge() marks dead letters PURGED, keeps their history, and counts only dead ones."""
    env = await _kill(transport, "sms")
    assert await transport.purge([env.id, "01NOSUCHMESSAGE000000000000"]) == 1
    assert await transport.dead_letters() == []
    record = await transport.message(env.id)
    assert record is not None and record.state is MessageState.PURGED
    assert (await transport.history(env.id))[-1].kind == "purged"
    assert await transport.replay(env.id) is False
    assert await transport.purge([env.id]) == 0


async def test_dead_letter_summary_counts_what_dead_letters_lists(transport: Transport) -> None:
    """dead_letter_summary() (metrics, dashboard) agrees with dead_letters() per flow, and
    follows a purge."""
    assert await transport.dead_letter_summary("sms") == (0, None)
    first = await _kill(transport, "sms")
    second = await _kill(transport, "email")
    for flow, env in (("sms", first), ("email", second)):
        [letter] = await transport.dead_letters(flow=flow)
        assert letter.message_id == env.id
        count, oldest = await transport.dead_letter_summary(flow)
        assert (count, oldest) == (1, pytest.approx(letter.dead_at))
    assert await transport.dead_letter_summary("other") == (0, None)
    await transport.purge([first.id])
    assert await transport.dead_letter_summary("sms") == (0, None)
    assert (await transport.dead_letter_summary("email"))[0] == 1


async def test_dedupe_key_rejects_second_publish(transport: Transport) -> None:
    """A second publish under a seen dedupe key stores nothing and names the first ids."""
    first = Envelope.new("calls", {"call": 1})
    second = Envelope.new("calls", {"call": 1})
    r1 = await transport.publish([first], dedupe_key="call-1")
    r2 = await transport.publish([second], dedupe_key="call-1")
    assert r1.accepted == [first.id]
    assert (r2.accepted, r2.duplicate_of) == ([], [first.id])
    assert await transport.message(second.id) is None
    assert await transport.backlog("calls") == 1


async def test_concurrent_dedupe_accepts_one(transport: Transport) -> None:
    """Concurrent publishes under one dedupe key: exactly one is accepted."""
    envs = [Envelope.new("calls", {"i": i}) for i in range(10)]
    results = await asyncio.gather(*(transport.publish([e], dedupe_key="k") for e in envs))
    accepted = [r for r in results if r.accepted]
    assert len(accepted) == 1
    assert all(r.duplicate_of == accepted[0].accepted for r in results if not r.accepted)


async def test_backlog_bound_raises_backpressure(make_transport: MakeTransport) -> None:
    """backlog() counts queued messages per flow; a publish past the bound is refused."""
    transport = await make_transport(backlog_limit=3)
    await transport.publish([Envelope.new("a", {}), Envelope.new("a", {})])
    await transport.publish([Envelope.new("b", {})])
    assert (
        await transport.backlog(),
        await transport.backlog("a"),
        await transport.backlog("b"),
    ) == (3, 2, 1)
    with pytest.raises(BackpressureError) as caught:
        await transport.publish([Envelope.new("a", {})])
    assert caught.value.retry_after > 0
    assert await transport.backlog() == 3


async def test_emit_on_complete_publishes_children(transport: Transport) -> None:
    """complete(emit=...) stores and delivers the children in the same write as the ending."""
    parent = Envelope.new("parent", {"order": 1})

    async def act(d: Delivery) -> None:
        e = d.envelope
        kids = [(e.derive("child", {"part": i}, event="split"), 0.0) for i in range(2)]
        await d.complete(MessageState.DELIVERED, e, [entry(e, "delivered")], emit=kids)

    children = Recorder(complete)
    transport.consume("parent", Recorder(act))
    transport.consume("child", children)
    await transport.publish([parent])
    got = await children.take(2)
    assert sorted(c.body["part"] for c in got) == [0, 1]
    assert {c.headers[CORRELATION_ID] for c in got} == {parent.id}
    assert (await transport.history(got[0].id))[0].kind == "received"


@pytest.mark.parametrize("limit", [1, 3], ids=["serial", "three"])
async def test_concurrency_limit_respected(transport: Transport, limit: int) -> None:
    """No more than ``concurrency`` handlers of a flow run at once, and that many do."""
    running, peak = 0, 0

    async def act(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        await complete(d)

    await transport.publish([Envelope.new("busy", {"i": i}) for i in range(8)])
    rec = Recorder(act)
    transport.consume("busy", rec, concurrency=limit)
    await rec.take(8)
    assert peak == limit


async def test_handler_exception_retries_message(transport: Transport) -> None:
    """A handler that raises is logged and the message runs again, same attempt."""
    env = Envelope.new("flaky", {})
    calls = 0

    async def act(d: Delivery) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        await complete(d)

    rec = Recorder(act)
    with capture_logs() as logs:
        transport.consume("flaky", rec)
        await transport.publish([env])
        first, second = await rec.take(2)
    assert (first.attempt, second.attempt) == (1, 1)
    crashes = [h for h in await transport.history(env.id) if h.outcome == "retry"]
    assert [c.error for c in crashes] == ["handler crashed: RuntimeError: boom"]
    assert any(
        log["event"] == "transport.handler_crashed" and log["message_id"] == env.id for log in logs
    )


async def test_delivery_ends_once(transport: Transport) -> None:
    """A second ending call on one delivery is refused."""
    errors: list[Exception] = []

    async def act(d: Delivery) -> None:
        await complete(d)
        try:
            await d.retry(d.envelope, 0)
        except TransportError as exc:
            errors.append(exc)

    rec = Recorder(act)
    transport.consume("once", rec)
    await transport.publish([Envelope.new("once", {})])
    await rec.next()
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ({"flow": "a"}, ["a1", "a2"]),
        ({"state": MessageState.DELIVERED}, ["b1"]),
        ({"correlation_id": "corr-x"}, ["a1", "b1"]),
        ({"flow": "a", "correlation_id": "corr-x"}, ["a1"]),
        ({"flow": "a", "limit": 1}, ["a2"]),
    ],
    ids=["flow", "state", "correlation", "flow+correlation", "limit-newest-first"],
)
async def test_search_filters(transport: Transport, query: dict, expect: list[str]) -> None:
    """search() applies every given filter and lists newest first."""
    made = {
        "a1": Envelope.new("a", {"n": "a1"}, {CORRELATION_ID: "corr-x"}),
        "b1": Envelope.new("b", {"n": "b1"}, {CORRELATION_ID: "corr-x"}),
        "a2": Envelope.new("a", {"n": "a2"}),
    }
    for env in made.values():  # one by one, so 'newest' is well defined
        await transport.publish([env])
        await asyncio.sleep(0.002)
    rec = Recorder(complete)
    transport.consume("b", rec)
    await rec.next()
    found = [r.envelope.body["n"] for r in await transport.search(**query)]
    assert found == sorted(expect, key=list(made).index, reverse=True)


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ({}, ["child", "root"]),
        ({"flow": "a"}, ["root"]),
        ({"limit": 1}, ["child"]),
        ({"state": MessageState.DELIVERED}, []),
    ],
    ids=["both", "flow", "limit", "state"],
)
async def test_search_by_correlation_finds_its_root(
    transport: Transport, query: dict, expect: list[str]
) -> None:
    """A correlation id is its root message's id: searching it lists the root (oldest, last)
    beside the messages that carry it, under the same filters."""
    root = Envelope.new("a", {"n": "root"})
    child = Envelope.new("b", {"n": "child"}, {CORRELATION_ID: root.id})
    for env in (root, child):
        await transport.publish([env])
        await asyncio.sleep(0.002)
    found = await transport.search(correlation_id=root.id, **query)
    assert [r.envelope.body["n"] for r in found] == expect
