"""The pure instructions of a compiled flow: validate, map, filter, branch, jump.

No I/O here: each function takes an envelope and returns the next one (or raises a
StepFailure that the runner turns into a dead letter). ``to`` and ``publish`` touch the world
and live in the runner; the pure parts of ``publish`` (its delay) and ``split`` (the children)
are here.
"""

from __future__ import annotations

from dataclasses import dataclass

from jmespath.exceptions import JMESPathError

from bus.config.loader import parse_duration
from bus.envelope import CAUSATION_ID, Envelope, new_id
from bus.errors import MappingError, TielineError
from bus.flow import Instr

SPLIT_INDEX, SPLIT_COUNT = "split_index", "split_count"  # headers of split children


class StepFailure(TielineError):
    """A pure step failed on this message's content: retrying cannot help."""


@dataclass(frozen=True, slots=True)
class PureOutcome:
    envelope: Envelope  # with the cursor already pointing at the next instruction
    filtered: bool = False
    note: str | None = None  # for the ledger, e.g. which branch was taken


def run_pure(instr: Instr, env: Envelope, cursor: int) -> PureOutcome:
    """Run one pure instruction at ``cursor``; the returned envelope's cursor is where to go next."""
    kind = instr.kind
    if kind == "map":
        try:
            body = instr.mapping.apply(_view(env))
        except MappingError as e:
            raise StepFailure(str(e)) from e
        return PureOutcome(env.evolve(body=body, cursor=cursor + 1))
    if kind == "validate":
        errors = sorted(instr.validator.iter_errors(env.body), key=lambda e: list(e.absolute_path))
        if errors:
            parts = []
            for err in errors[:5]:
                where = "body" + "".join(
                    f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
                )
                parts.append(f"{where}: {err.message}")
            raise StepFailure("validation failed: " + "; ".join(parts))
        return PureOutcome(env.evolve(cursor=cursor + 1))
    if kind == "filter":
        if instr.expr.truthy(_view(env)):
            return PureOutcome(env.evolve(cursor=cursor + 1))
        return PureOutcome(env.evolve(cursor=cursor + 1), filtered=True, note=instr.expr.source)
    if kind == "branch":
        view = _view(env)
        for i, (cond, target) in enumerate(instr.branches):
            if cond is None or cond.truthy(view):
                label = "otherwise" if cond is None else f"when {cond.source}"
                return PureOutcome(env.evolve(cursor=target), note=f"branch {i}: {label}")
        return PureOutcome(env.evolve(cursor=instr.target), note="no branch matched")
    if kind == "jump":
        return PureOutcome(env.evolve(cursor=instr.target))
    raise TypeError(f"{instr.kind} is not a pure instruction")


def _view(env: Envelope) -> dict:
    return env.view()


def publish_delay(instr: Instr, env: Envelope) -> float:
    """Seconds before a published message runs: ``delay:``, or ``delay_expr:`` on this message."""
    if instr.delay_expr is None:
        return instr.delay or 0.0
    try:
        value = instr.delay_expr.search(_view(env))
    except (MappingError, JMESPathError) as e:
        raise StepFailure(f"delay_expr {instr.delay_expr.source}: {e}") from e
    if value is None:
        return 0.0
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(value)
        return max(0.0, parse_duration(value))
    except ValueError:
        raise StepFailure(f"delay_expr {instr.delay_expr.source} gave {value!r}: expected "
                          "seconds or a duration like 30s, 2h, 2d") from None


def split_children(instr: Instr, env: Envelope, cursor: int) -> list[Envelope]:
    """One envelope per item of the split list, in the same flow, resuming after ``cursor``."""
    try:
        items = instr.expr.search(_view(env))
    except (MappingError, JMESPathError) as e:
        raise StepFailure(f"split {instr.expr.source}: {e}") from e
    if not isinstance(items, list):
        kind = "null" if items is None else type(items).__name__
        raise StepFailure(f"split {instr.expr.source} gave {kind}, not a list; point it at an array")
    # Saga state belongs to the parent: a child must never undo the parent's steps.
    context = {k: v for k, v in env.context.items() if not k.startswith("_saga")}
    count = str(len(items))
    return [
        Envelope(
            id=new_id(), flow=env.flow, body=item, cursor=cursor + 1, context=context,
            headers={**env.headers, CAUSATION_ID: env.id, SPLIT_INDEX: str(i), SPLIT_COUNT: count},
            flow_version=env.flow_version,
        )
        for i, item in enumerate(items)
    ]
