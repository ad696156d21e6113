"""The pure parts of publish (its delay) and split (the children) in bus.steps."""

from __future__ import annotations

import pytest

from bus.envelope import Envelope
from bus.flow import Instr
from bus.mapping import compile_expression
from bus.steps import StepFailure, publish_delay, split_children

LOC = None


def delay_instr(delay=None, expr=None) -> Instr:
    return Instr("publish", "steps[0] publish: t", LOC, topic="t", delay=delay,
                 delay_expr=compile_expression(expr) if expr else None)


@pytest.mark.parametrize(("instr", "body", "seconds"), [
    (delay_instr(), {}, 0.0),
    (delay_instr(delay=172800.0), {}, 172800.0),
    (delay_instr(expr="body.sla"), {"sla": 90}, 90.0),
    (delay_instr(expr="body.sla"), {"sla": "2d"}, 172800.0),
    (delay_instr(expr="body.sla"), {}, 0.0),
    (delay_instr(expr="body.sla"), {"sla": -5}, 0.0),
], ids=["none", "fixed", "expr-number", "expr-duration", "expr-null", "negative"])
def test_publish_delay(instr, body, seconds):
    """delay: is fixed; delay_expr: reads seconds or a duration from the message."""
    assert publish_delay(instr, Envelope.new("f", body)) == seconds


@pytest.mark.parametrize("value", ["soon", True, {"a": 1}], ids=str)
def test_bad_delay_expr_value_fails_the_step(value):
    """A delay_expr value that is not a duration is a step failure naming the expression."""
    with pytest.raises(StepFailure, match="delay_expr body.sla gave"):
        publish_delay(delay_instr(expr="body.sla"), Envelope.new("f", {"sla": value}))


def split_instr(expr: str = "body.items") -> Instr:
    return Instr("split", f"steps[1] split: {expr}", LOC, expr=compile_expression(expr))


def test_split_children_continue_after_the_split():
    """Each child: new id, body = item, cursor after the split, index/count headers, same correlation."""
    parent = Envelope.new("f", {"items": [1, {"a": 2}]}, {"variant": "canary"}).evolve(
        cursor=1, context={"t": 1, "_saga": {"done": []}}, attempt=3)
    kids = split_children(split_instr(), parent, 1)
    assert [k.body for k in kids] == [1, {"a": 2}]
    assert {k.id for k in kids}.isdisjoint({parent.id}) and len({k.id for k in kids}) == 2
    for i, k in enumerate(kids):
        assert (k.flow, k.cursor, k.attempt, dict(k.context)) == ("f", 2, 1, {"t": 1})
        assert k.headers["split_index"] == str(i) and k.headers["split_count"] == "2"
        assert k.correlation_id == parent.correlation_id
        assert k.headers["causation_id"] == parent.id and k.headers["variant"] == "canary"


@pytest.mark.parametrize(("body", "kind"), [({"items": {"a": 1}}, "dict"), ({}, "null")],
                         ids=["object", "missing"])
def test_split_needs_a_list(body, kind):
    """split over something that is not a list fails the step, saying what it got."""
    with pytest.raises(StepFailure, match=f"gave {kind}, not a list"):
        split_children(split_instr(), Envelope.new("f", body), 0)
