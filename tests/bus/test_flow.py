"""Compiling a flow: nested routes flatten into a program whose cursor is one integer."""

from bus.config.model import (
    Branch,
    EventSource,
    FilterStep,
    Flow,
    MappingRef,
    MapStep,
    PublishStep,
    RouteStep,
    ToStep,
)
from bus.envelope import Envelope
from bus.flow import compile_flow
from bus.steps import run_pure

SRC = EventSource("cc", "call.completed")


def route_flow() -> Flow:
    return Flow(
        name="f",
        source=SRC,
        steps=(
            MapStep(MappingRef("m", inline={"fields": {"vip": "body.vip", "n": "body.n"}})),
            RouteStep(
                (
                    Branch("body.vip", (ToStep("t", "urgent"),)),
                    Branch(None, (ToStep("t", "normal"), ToStep("t", "audit"))),
                )
            ),
            PublishStep("done"),
        ),
    )


def test_route_flattens_into_branch_and_jumps():
    """A route becomes a branch instruction, each branch ends in a jump past the route."""
    program = compile_flow(route_flow(), {}).program
    assert [i.kind for i in program] == ["map", "branch", "to", "jump", "to", "to", "jump", "publish"]
    branch = program[1]
    assert [t for _, t in branch.branches] == [2, 4]
    assert program[3].target == program[6].target == 7
    assert program[4].label == "steps[1].route[1].steps[0] to: t.normal"


def test_to_ahead_marks_where_a_checkpoint_is_worth_it():
    """to_ahead[i] says whether any to: remains at or after instruction i."""
    cf = compile_flow(route_flow(), {})
    assert cf.to_ahead == (True, True, True, True, True, True, False, False, False)


def walk(cf, body):
    """Run the pure instructions from 0, skipping over to:/publish, and list the kinds visited."""
    env = Envelope.new("f", body)
    seen = []
    while env.cursor < len(cf.program):
        instr = cf.program[env.cursor]
        seen.append(instr.kind + (f":{instr.action}" if instr.kind == "to" else ""))
        if instr.kind in ("to", "publish"):
            env = env.evolve(cursor=env.cursor + 1)
        else:
            out = run_pure(instr, env, env.cursor)
            if out.filtered:
                seen.append("filtered")
                break
            env = out.envelope
    return seen


def test_branches_are_taken_by_condition():
    """The first branch whose condition holds runs; otherwise catches the rest."""
    cf = compile_flow(route_flow(), {})
    assert walk(cf, {"vip": True}) == ["map", "branch", "to:urgent", "jump", "publish"]
    assert walk(cf, {"vip": False}) == ["map", "branch", "to:normal", "to:audit", "jump", "publish"]


def test_filter_stops_the_message():
    """A falsy filter ends the message as filtered."""
    flow = Flow(name="f", source=SRC, steps=(FilterStep("body.ok"), PublishStep("x")))
    cf = compile_flow(flow, {})
    assert walk(cf, {"ok": False}) == ["filter", "filtered"]
    assert walk(cf, {"ok": True}) == ["filter", "publish"]


def test_advanced_steps_compile():
    """reply, split and a to: with compensate, cache and its connector's rate and breaker."""
    from bus.config.model import (
        BreakerPolicy,
        Compensation,
        ConnectorConfig,
        Rate,
        ReplyStep,
        SplitStep,
    )

    undo = Compensation("t", "cancel", MappingRef("u", inline={"fields": {"id": "context.r.id"}}))
    flow = Flow(name="f", source=SRC, steps=(
        SplitStep("body.items"),
        ToStep("t", "make", as_="r", compensate=undo, cache=5.0),
        ReplyStep(201, None),
    ))
    t = ConnectorConfig("t", "http", {}, rate=Rate(2.0, 4.0), circuit_breaker=BreakerPolicy())
    cf = compile_flow(flow, {}, {"t": t})
    split, to, reply = cf.program
    assert (split.kind, split.expr.source) == ("split", "body.items")
    assert (to.undo.label, to.undo.connector, to.undo.action) == (
        "steps[1] compensate: t.cancel", "t", "cancel")
    assert to.undo.mapping.apply({"context": {"r": {"id": 7}}}) == {"id": 7}
    assert (to.cache, to.rate, to.breaker) == (5.0, Rate(2.0, 4.0), BreakerPolicy())
    assert (reply.kind, reply.status, cf.saga) == ("reply", 201, True)
    assert compile_flow(route_flow(), {}).saga is False
