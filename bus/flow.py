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

from bus.config.model import (
    BreakerPolicy,
    Compensation,
    Config,
    ConnectorConfig,
    FilterStep,
    Flow,
    Location,
    MappingRef,
    MapStep,
    PublishStep,
    Rate,
    ReplyStep,
    RetryPolicy,
    RouteStep,
    SplitStep,
    Step,
    ToStep,
    ValidateStep,
)
from bus.mapping import Expression, compile_expression, compile_mapping
from bus.schema_check import SchemaCheck


@dataclass(frozen=True, slots=True)
class Undo:
    """A compiled compensation: the action that undoes a completed ``to:`` (sagas)."""

    label: str  # 'steps[1] compensate: desk.delete_ticket'
    connector: str
    action: str
    mapping: Any = None  # payload; None: the body


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
    delay_expr: Expression | None = None  # publish: per-message delay
    once_per: Expression | None = None  # publish: dedupe key per message
    undo: Undo | None = None  # to: saga compensation
    cache: float | None = None  # to: sync flows reuse results this long
    rate: Rate | None = None  # to: the connector's throttle
    breaker: BreakerPolicy | None = None  # to: the connector's circuit breaker
    status: int = 200  # reply


@dataclass(frozen=True, slots=True)
class CanaryRule:
    flow: str
    percent: float
    key: Expression


@dataclass(frozen=True, slots=True)
class CompiledFlow:
    flow: Flow
    program: tuple[Instr, ...]
    when: Expression | None = None
    # index i → True when an instruction at or after i is a 'to' (a checkpoint is then worth a commit)
    to_ahead: tuple[bool, ...] = field(default=())
    canary: CanaryRule | None = None
    canary_of: str | None = None  # this flow is the canary of that one: it gets messages via it
    saga: bool = False  # some to: has a compensation

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
    def __init__(self, mappings: Mapping[str, Any], connectors: Mapping[str, ConnectorConfig]):
        self.mappings = mappings
        self.connectors = connectors
        self.out: list[Instr] = []

    def steps(self, steps: tuple[Step, ...], prefix: str) -> None:
        for i, step in enumerate(steps):
            self.step(step, f"{prefix}[{i}]")

    def step(self, step: Step, path: str) -> None:
        emit = self.out.append
        if isinstance(step, ValidateStep):
            emit(Instr("validate", f"{path} validate", step.loc, validator=SchemaCheck(step.schema)))
        elif isinstance(step, MapStep):
            m = _resolve(step.mapping, self.mappings)
            emit(Instr("map", f"{path} map: {step.mapping.name}", step.loc, mapping=m))
        elif isinstance(step, FilterStep):
            emit(Instr("filter", f"{path} filter", step.loc, expr=compile_expression(step.expr)))
        elif isinstance(step, ToStep):
            m = _resolve(step.mapping, self.mappings) if step.mapping else None
            cc = self.connectors.get(step.connector)
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
                    undo=self.undo(step.compensate, path),
                    cache=step.cache,
                    rate=cc.rate if cc else None,
                    breaker=cc.circuit_breaker if cc else None,
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
                    delay_expr=compile_expression(step.delay_expr) if step.delay_expr else None,
                    once_per=compile_expression(step.once_per) if step.once_per else None,
                )
            )
        elif isinstance(step, ReplyStep):
            m = _resolve(step.mapping, self.mappings) if step.mapping else None
            emit(Instr("reply", f"{path} reply", step.loc, mapping=m, status=step.status))
        elif isinstance(step, SplitStep):
            expr = compile_expression(step.expr)
            emit(Instr("split", f"{path} split: {step.expr}", step.loc, expr=expr))
        elif isinstance(step, RouteStep):
            self.route(step, path)
        else:  # pragma: no cover - the loader only builds the kinds above
            raise TypeError(f"unknown step {step!r}")

    def undo(self, comp: Compensation | None, path: str) -> Undo | None:
        if comp is None:
            return None
        m = _resolve(comp.mapping, self.mappings) if comp.mapping else None
        label = f"{path} compensate: {comp.connector}.{comp.action}"
        return Undo(label, comp.connector, comp.action, m)

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


def compile_flow(flow: Flow, mappings: Mapping[str, Any],
                 connectors: Mapping[str, ConnectorConfig] | None = None) -> CompiledFlow:
    """Flatten ``flow`` into instructions; mappings are the named, already compiled ones.

    ``connectors`` supply each ``to:`` with its connector's throttle and circuit breaker.
    """
    c = _Compiler(mappings, connectors or {})
    c.steps(flow.steps, "steps")
    program = tuple(c.out)
    ahead = [False] * (len(program) + 1)
    for i in range(len(program) - 1, -1, -1):
        ahead[i] = ahead[i + 1] or program[i].kind == "to"
    when = compile_expression(flow.when) if flow.when else None
    canary = None
    if flow.canary is not None:
        c_ = flow.canary
        canary = CanaryRule(c_.flow, c_.percent, compile_expression(c_.key))
    return CompiledFlow(flow=flow, program=program, when=when, to_ahead=tuple(ahead),
                        canary=canary, saga=any(i.undo is not None for i in program))


def compile_all(config: Config) -> dict[str, CompiledFlow]:
    out = {name: compile_flow(f, config.mappings, config.connectors)
           for name, f in config.flows.items()}
    for name, cf in list(out.items()):
        if cf.canary is not None and cf.canary.flow in out:
            out[cf.canary.flow] = _with(out[cf.canary.flow], canary_of=name)
    return out
