"""The pure instructions of a compiled flow: validate, map, filter, branch, jump.

No I/O here: each function takes an envelope and returns the next one (or raises a
StepFailure that the runner turns into a dead letter). ``to`` and ``publish`` touch the world
and live in the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.envelope import Envelope
from bus.errors import MappingError, TielineError
from bus.flow import Instr


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
