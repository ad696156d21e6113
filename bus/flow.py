"""A flow compiled into a flat program of instructions.

Nested ``route`` branches are flattened into jumps so that a message's position is one integer
(``Envelope.cursor``): a retry resumes at exactly the failed instruction, and the cursor travels
with the message on any transport. Compilation is pure and happens once per configuration load.

    steps: [map, route[when a: [to x], otherwise: [to y]], publish]
    program: 0 map · 1 branch(a→2, else→4) · 2 to x · 3 jump→5 · 4 to y · 5 publish
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from bus.config.model import (
    Config,
    FilterStep,
    Flow,
    Location,
    MappingRef,
    MapStep,
    PublishStep,
    RetryPolicy,
    RouteStep,
    Step,
    ToStep,
    ValidateStep,
)
from bus.mapping import Expression, compile_expression, compile_mapping


@dataclass(frozen=True, slots=True)
class Instr:
    """One instruction. ``label`` names it for ledger, logs and errors: 'steps[2] to: t.create'."""

    kind: str  # validate | map | filter | branch | jump | to | publish
    label: str
    loc: Location
    validator: Any = None  # validate
    mapping: Any = None  # map, to (payload), publish (body)
    expr: Expression | None = None  # filter
    branches: tuple[tuple[Expression | None, int], ...] = ()  # branch: (condition, target)
    target: int = 0  # jump; branch fall-through when nothing matched
    connector: str = ""  # to
    action: str = ""  # to
    as_: str | None = None  # to
    retry: RetryPolicy | None = None  # to: overrides the flow policy
    topic: str = ""  # publish
    delay: float | None = None  # publish


@dataclass(frozen=True, slots=True)
class CompiledFlow:
    flow: Flow
    program: tuple[Instr, ...]
    when: Expression | None = None
    # index i → True when an instruction at or after i is a 'to' (a checkpoint is then worth a commit)
    to_ahead: tuple[bool, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.flow.name

    @property
    def version(self) -> str:
        return self.flow.version


def _resolve(ref: MappingRef, mappings: Mapping[str, Any]) -> Any:
    if ref.inline is not None:
        return compile_mapping(ref.name, ref.inline)
    return mappings[ref.name]


class _Compiler:
    def __init__(self, mappings: Mapping[str, Any]):
        self.mappings = mappings
        self.out: list[Instr] = []

    def steps(self, steps: tuple[Step, ...], prefix: str) -> None:
        for i, step in enumerate(steps):
            self.step(step, f"{prefix}[{i}]")

    def step(self, step: Step, path: str) -> None:
        emit = self.out.append
        if isinstance(step, ValidateStep):
            cls = jsonschema.validators.validator_for(step.schema)
            emit(Instr("validate", f"{path} validate", step.loc, validator=cls(step.schema)))
        elif isinstance(step, MapStep):
            m = _resolve(step.mapping, self.mappings)
            emit(Instr("map", f"{path} map: {step.mapping.name}", step.loc, mapping=m))
        elif isinstance(step, FilterStep):
            emit(Instr("filter", f"{path} filter", step.loc, expr=compile_expression(step.expr)))
        elif isinstance(step, ToStep):
            m = _resolve(step.mapping, self.mappings) if step.mapping else None
            emit(
                Instr(
                    "to",
                    f"{path} to: {step.connector}.{step.action}",
                    step.loc,
                    mapping=m,
                    connector=step.connector,
                    action=step.action,
                    as_=step.as_,
                    retry=step.retry,
                )
            )
        elif isinstance(step, PublishStep):
            m = _resolve(step.mapping, self.mappings) if step.mapping else None
            emit(
                Instr(
                    "publish",
                    f"{path} publish: {step.topic}",
                    step.loc,
                    mapping=m,
                    topic=step.topic,
                    delay=step.delay,
                )
            )
        elif isinstance(step, RouteStep):
            self.route(step, path)
        else:  # pragma: no cover - the loader only builds the kinds above
            raise TypeError(f"unknown step {step!r}")

    def route(self, step: RouteStep, path: str) -> None:
        at = len(self.out)
        self.out.append(Instr("branch", f"{path} route", step.loc))  # patched below
        targets: list[tuple[Expression | None, int]] = []
        jumps: list[int] = []
        for b, branch in enumerate(step.branches):
            cond = compile_expression(branch.when) if branch.when is not None else None
            targets.append((cond, len(self.out)))
            self.steps(branch.steps, f"{path}.route[{b}].steps")
            jumps.append(len(self.out))
            self.out.append(Instr("jump", f"{path}.route[{b}] end", branch.loc))
        end = len(self.out)
        for j in jumps:
            self.out[j] = _with(self.out[j], target=end)
        self.out[at] = _with(self.out[at], branches=tuple(targets), target=end)


def _with(instr: Instr, **changes: Any) -> Instr:
    from dataclasses import replace

    return replace(instr, **changes)


def compile_flow(flow: Flow, mappings: Mapping[str, Any]) -> CompiledFlow:
    """Flatten ``flow`` into instructions; mappings are the named, already compiled ones."""
    c = _Compiler(mappings)
    c.steps(flow.steps, "steps")
    program = tuple(c.out)
    ahead = [False] * (len(program) + 1)
    for i in range(len(program) - 1, -1, -1):
        ahead[i] = ahead[i + 1] or program[i].kind == "to"
    when = compile_expression(flow.when) if flow.when else None
    return CompiledFlow(flow=flow, program=program, when=when, to_ahead=tuple(ahead))


def compile_all(config: Config) -> dict[str, CompiledFlow]:
    return {name: compile_flow(f, config.mappings) for name, f in config.flows.items()}
