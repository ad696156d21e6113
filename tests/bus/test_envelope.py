"""Message ids: ULIDs that python-ulid reads back, unique and sorted in the order made."""

from __future__ import annotations

import threading
import time

import pytest
from ulid import ULID

from bus import envelope
from bus.envelope import new_id


def test_an_id_is_a_ulid_of_now() -> None:
    before = time.time()
    mid = new_id()
    after = time.time()
    parsed = ULID.from_str(mid)
    assert str(parsed) == mid and len(mid) == 26
    assert before - 0.001 <= parsed.timestamp <= after + 0.001


def test_ids_made_one_after_another_are_unique_and_sorted() -> None:
    ids = [new_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_within_a_millisecond_the_random_part_counts_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "_last_ms", -1)  # (restored after: ids stay in order)
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_796_630_000_123_000_000)
    first, second = ULID.from_str(new_id()), ULID.from_str(new_id())
    assert first.timestamp == second.timestamp == 1_796_630_000.123
    assert int(second) == int(first) + 1


def test_a_clock_stepping_back_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    later = new_id()
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_000_000_000_000_000_000)  # 2001
    assert new_id() > later


def test_the_random_part_running_out_moves_to_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(envelope, "_last_ms", -1)
    monkeypatch.setattr(envelope.time, "time_ns", lambda: 1_896_630_000_000_000_000)
    new_id()
    monkeypatch.setattr(envelope, "_last_random", 2**80 - 1)
    after = ULID.from_str(new_id())
    assert after.timestamp == 1_896_630_000.001


def test_threads_never_share_an_id() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [mid for out in made for mid in out]
    assert len(set(every)) == len(every)


def test_evolve_changes_each_field_alone_as_dataclasses_replace_does() -> None:
    """evolve is written out field by field: a field added to Envelope and left out of it
    fails here."""
    import dataclasses

    env = envelope.Envelope.new("f", {"a": 1}, {"source": "s"})
    for f in dataclasses.fields(envelope.Envelope):
        value = object()
        assert env.evolve(**{f.name: value}) == dataclasses.replace(env, **{f.name: value})
    assert env.evolve() == env and env.evolve() is not env
    with pytest.raises(TypeError, match="no field"):
        env.evolve(colour="red")
