"""Sagas: when a flow fails for good, undo its completed ``to:`` steps in reverse order.

The state is durable because it travels in the envelope, under the reserved context key
``_saga``: the original body (so a replay can start over), the completed steps that have a
``compensate:`` with their results, and, once compensating, the phase: the original error and
what has been undone. Each compensation is checkpointed, so a crash, a retry or a replay
resumes exactly where compensation stopped; each is retried under the flow's retry policy.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import structlog
from jmespath.exceptions import JMESPathError

from bus.calls import call_context
from bus.envelope import Envelope
from bus.errors import MappingError, PermanentError
from bus.flow import CompiledFlow
from bus.retry import decide
from bus.transport.base import Delivery, LedgerEntry

if TYPE_CHECKING:
    from bus.runner import FlowRunner

SAGA = "_saga"
log = structlog.get_logger("tieline.saga")


def remember(context: dict[str, Any], cursor: int, result: Any) -> None:
    """Record in ``context`` that the compensable ``to:`` at ``cursor`` completed with ``result``."""
    state = context.get(SAGA) or {"body": None, "done": []}
    context[SAGA] = {**state, "done": [*state["done"], [cursor, result]]}


def pending(env: Envelope) -> bool:
    """Completed steps wait to be undone if this message fails for good."""
    return bool((env.context.get(SAGA) or {}).get("done"))


def compensating(env: Envelope) -> bool:
    phase = (env.context.get(SAGA) or {}).get("phase")
    return bool(phase) and phase.get("status") == "compensating"


def begin(env: Envelope, error: str, chain: list[str], step: str) -> Envelope:
    """Enter the compensation phase, remembering why (``step`` is the label that failed)."""
    state = dict(env.context[SAGA])
    state["phase"] = {"status": "compensating", "error": error, "chain": chain, "step": step,
                      "undone": []}
    return env.evolve(context={**env.context, SAGA: state}, attempt=1)


class Compensator:
    """Runs the compensation phase for a :class:`FlowRunner` (its ledger, calls and DLQ)."""

    def __init__(self, runner: FlowRunner):
        self.runner = runner

    def prepare(self, cf: CompiledFlow, env: Envelope, entries: list[LedgerEntry]) -> Envelope:
        """Keep the original body on a fresh message; start over a replayed, compensated one."""
        state = env.context.get(SAGA)
        if state is None and env.cursor == 0:
            return env.evolve(context={**env.context, SAGA: {"body": env.body, "done": []}})
        if state and (state.get("phase") or {}).get("status") == "compensated":
            body = state["body"]
            entries.append(LedgerEntry(env.id, "compensate", self.runner.clock(), flow=cf.name,
                                       outcome="restart", detail={"note": "compensated saga "
                                       "replayed: starting over from the first step"}))
            return env.evolve(body=body, cursor=0, context={SAGA: {"body": body, "done": []}})
        return env

    async def run(self, delivery: Delivery, cf: CompiledFlow, env: Envelope,
                  entries: list[LedgerEntry]) -> None:
        r = self.runner
        policy = dataclasses.replace(cf.flow.retry, deadline=None)  # undo must get its tries
        while True:
            state = env.context[SAGA]
            phase = state["phase"]
            if not state["done"]:
                break
            cursor, result = state["done"][-1]
            instr = cf.program[cursor]
            undo = instr.undo
            view = env.view()
            view["context"][instr.as_ or "result"] = result
            entry = _entry_for(r, cf, env, undo.label)
            try:
                payload = undo.mapping.apply(view) if undo.mapping else env.body
                ctx = call_context(cf.name, undo.label, env, f"{env.id}-{cursor}-undo")
                await r.calls.call(undo.connector, undo.action, payload, ctx)
            except Exception as exc:  # noqa: BLE001 - classified right below, like the runner does
                error = f"{type(exc).__name__}: {exc}"
                verdict = None
                if not isinstance(exc, PermanentError | MappingError | JMESPathError):
                    verdict = decide(policy, attempt=env.attempt, first_seen=env.first_seen,
                                     now=r.clock(), retry_after=getattr(exc, "retry_after", None))
                if verdict is not None and verdict.retry:
                    entries.append(entry("retry", error, {"delay": round(verdict.delay, 3)}))
                    await delivery.retry(env.evolve(attempt=env.attempt + 1), verdict.delay, entries)
                    r._finished(cf, env, "retried")
                    return
                reason = verdict.reason if verdict is not None else "permanent"
                entries.append(entry("fail", error, {"reason": reason}))
                log.warning("compensation_failed", message_id=env.id, flow=cf.name,
                            step=undo.label, error=error)
                message = (f"{phase['error']}; compensation {undo.label} failed: {error} "
                           f"({_path(phase)})")
                await r._dead(delivery, cf, env, message, [*phase["chain"], error], entries)
                return
            entries.append(entry("ok", None, {"for": instr.label}))
            phase = {**phase, "undone": [*phase["undone"], instr.label.split(" ", 1)[0]]}
            state = {**state, "done": state["done"][:-1], "phase": phase}
            env = env.evolve(context={**env.context, SAGA: state}, attempt=1)
            await delivery.checkpoint(env, entries)
            entries = []
        state = {**state, "phase": {**phase, "status": "compensated"}}
        env = env.evolve(context={**env.context, SAGA: state})
        entries.append(LedgerEntry(env.id, "compensate", r.clock(), flow=cf.name,
                                   step=phase["step"], outcome="done",
                                   detail={"path": _path(phase)}))
        await r._dead(delivery, cf, env, f"{phase['error']} ({_path(phase)})", phase["chain"],
                      entries)


def _path(phase: dict[str, Any]) -> str:
    return "compensated: " + (", ".join(phase["undone"]) or "nothing")


def _entry_for(r: FlowRunner, cf: CompiledFlow, env: Envelope, label: str):  # noqa: ANN202
    def make(outcome: str, error: str | None, detail: dict[str, Any]) -> LedgerEntry:
        return LedgerEntry(env.id, "compensate", r.clock(), flow=cf.name, step=label,
                           attempt=env.attempt, outcome=outcome, error=error, detail=detail)
    return make
