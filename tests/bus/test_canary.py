"""Canary routing: which flow an envelope goes to, decided by a hash of its key."""

from __future__ import annotations

import dataclasses

from bus.canary import route_variants, share
from bus.config.model import Canary, EventSource, Flow, ToStep
from bus.envelope import Envelope
from bus.flow import compile_flow
from bus.mapping import compile_expression

SRC = EventSource("cc", "call")


def flows(percent: float, *, canary_enabled: bool = True) -> dict:
    primary = Flow("v1", SRC, (ToStep("t", "a"),), canary=Canary("v2", percent, "body.k"))
    canary = Flow("v2", SRC, (ToStep("t", "b"),), enabled=canary_enabled)
    v1, v2 = compile_flow(primary, {}), compile_flow(canary, {})
    return {"v1": v1, "v2": dataclasses.replace(v2, canary_of="v1")}


def incoming(keys):
    return [e for k in keys for e in (Envelope.new("v1", {"k": k}), Envelope.new("v2", {"k": k}))]


def test_share_matches_hash_percent():
    """share() is the hash_percent mapping function's rule."""
    expr = compile_expression("hash_percent(body.k)")
    for k in ["a", "b", 42, None]:
        assert share(k) == expr.search({"body": {"k": k}, "headers": {}, "context": {}})


def test_canary_copy_is_dropped_and_primary_split_by_key():
    """The canary flow's own copy is dropped; the primary's goes to v2 when share(key) < percent."""
    keys = [f"c{i}" for i in range(20)]
    out = route_variants(flows(30), incoming(keys))
    assert [e.body["k"] for e in out] == keys
    for e in out:
        want = ("v2", "canary") if share(e.body["k"]) < 30 else ("v1", "primary")
        assert (e.flow, e.headers["variant"]) == want


def test_zero_and_hundred_percent():
    """0% keeps every message on the primary, 100% sends every one to the canary."""
    keys = [f"c{i}" for i in range(10)]
    assert {e.flow for e in route_variants(flows(0), incoming(keys))} == {"v1"}
    assert {e.flow for e in route_variants(flows(100), incoming(keys))} == {"v2"}


def test_disabled_canary_keeps_everything_on_the_primary():
    """A disabled canary flow takes nothing."""
    out = route_variants(flows(100, canary_enabled=False), [Envelope.new("v1", {"k": "x"})])
    assert [e.flow for e in out] == ["v1"]
