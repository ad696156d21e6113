"""FlowRunner: runs one delivered message through its compiled flow, from its cursor on.

Orchestration only: pure steps come from ``bus.steps``, the retry decision from ``bus.retry``,
durability from the transport's Delivery. The outcome of every message is exactly one of
delivered, filtered, retried later (from the failed step) or dead-lettered, and it is committed
together with the ledger entries that explain it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from jmespath.exceptions import JMESPathError

from bus.envelope import TRACEPARENT, Envelope
from bus.errors import ConnectorError, MappingError, PermanentError, RetryableError
from bus.flow import CompiledFlow, Instr
from bus.observe import Observer
from bus.retry import decide
from bus.steps import StepFailure, run_pure
from bus.transport.base import Delivery, LedgerEntry, MessageState, Transport
from connectors.base import CallContext, Connector

log = structlog.get_logger("tieline.runner")


def error_chain(exc: BaseException) -> list[str]:
    """``Class: message`` for the error and each cause behind it, outermost first."""
    chain, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return chain


class Topics:
    """Which flows consume each topic (``from: {topic: X}``), with their ``when`` filters."""

    def __init__(self, flows: Mapping[str, CompiledFlow]):
        self.by_topic: dict[str, list[CompiledFlow]] = {}
        for cf in flows.values():
            topic = getattr(cf.flow.source, "topic", None)
            if topic and cf.flow.enabled:
                self.by_topic.setdefault(topic, []).append(cf)

    def children(self, parent: Envelope, topic: str, body: Any) -> list[Envelope]:
        out = []
        for cf in self.by_topic.get(topic, ()):
            child = parent.derive(cf.name, body, event=topic, flow_version=cf.version)
            if cf.when is None or _safe_truthy(cf.when, child):
                out.append(child)
        return out


def _safe_truthy(expr: Any, env: Envelope) -> bool:
    try:
        return expr.truthy(env.view())
    except (MappingError, JMESPathError):
        return False


class FlowRunner:
    def __init__(
        self,
        flows: Mapping[str, CompiledFlow],
        connectors: Mapping[str, Connector],
        transport: Transport,
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ):
        self.observer = observer or Observer()
        self.flows = flows
        self.connectors = connectors
        self.transport = transport
        self.topics = Topics(flows)
        self.clock = clock

    def start(self) -> None:
        """Subscribe a consumer per enabled flow."""
        for cf in self.flows.values():
            if cf.flow.enabled:
                self.transport.consume(cf.name, self.handle, concurrency=cf.flow.concurrency)

    # ----- one message -------------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        cf = self.flows.get(env.flow)
        if cf is None:
            await delivery.dead(env, f"flow {env.flow!r} is not defined", [])
            return
        self.observer.started(cf.name)
        entries: list[LedgerEntry] = []
        emits: list[tuple[Envelope, float]] = []
        program = cf.program
        while env.cursor < len(program):
            cursor = env.cursor
            instr = program[cursor]
            if instr.kind == "to":
                try:
                    env = await self._call(cf, instr, env, entries)
                except (ConnectorError, Exception) as exc:  # classified in _failed
                    await self._failed(delivery, cf, instr, env, exc, entries)
                    return
                if cf.to_ahead[env.cursor]:
                    await delivery.checkpoint(env, entries)
                    entries = []
            elif instr.kind == "publish":
                try:
                    env = await self._publish(cf, instr, env, entries, emits)
                except (MappingError, JMESPathError) as exc:
                    await self._failed(delivery, cf, instr, env, StepFailure(str(exc)), entries)
                    return
            else:
                try:
                    out = run_pure(instr, env, cursor)
                except (StepFailure, MappingError, JMESPathError) as exc:
                    await self._failed(delivery, cf, instr, env, exc, entries)
                    return
                env = out.envelope
                if instr.kind not in ("jump",):
                    entries.append(self._entry(env, cf, "step", instr, "ok", detail=out.note))
                if out.filtered:
                    entries.append(self._entry(env, cf, "filtered", instr, None, detail=out.note))
                    await delivery.complete(MessageState.FILTERED, env, entries)
                    self._finished(cf, env, "filtered")
                    return
        entries.append(LedgerEntry(env.id, "delivered", self.clock(), flow=cf.name))
        await delivery.complete(MessageState.DELIVERED, env, entries, emits)
        self._finished(cf, env, "delivered")
        if emits:
            self._received_children([c for c, _ in emits])
        log.debug("delivered", message_id=env.id, flow=cf.name)

    def _finished(self, cf: CompiledFlow, env: Envelope, outcome: str) -> None:
        self.observer.finished(cf.name, outcome, self.clock() - env.first_seen)

    def _received_children(self, children: Sequence[Envelope]) -> None:
        for child in children:
            self.observer.received(child.flow)

    async def _call(
        self, cf: CompiledFlow, instr: Instr, env: Envelope, entries: list[LedgerEntry]
    ) -> Envelope:
        connector = self.connectors[instr.connector]
        payload = instr.mapping.apply(env.view()) if instr.mapping else env.body
        ctx = CallContext(
            message_id=env.id,
            flow=cf.name,
            step=instr.label,
            idempotency_key=env.idempotency_key(env.cursor),
            attempt=env.attempt,
            correlation_id=env.correlation_id,
            traceparent=env.headers.get(TRACEPARENT),
        )
        started = self.clock()
        try:
            result = await connector.call(instr.action, payload, ctx)
        except BaseException as exc:
            outcome = (
                "retryable" if isinstance(exc, RetryableError)
                else "permanent" if isinstance(exc, PermanentError) else "error"
            )
            self.observer.connector_call(instr.connector, instr.action, outcome, self.clock() - started)
            raise
        elapsed = self.clock() - started
        self.observer.connector_call(instr.connector, instr.action, "ok", elapsed)
        took = round(elapsed * 1000, 2)
        entries.append(self._entry(env, cf, "step", instr, "ok", detail={"ms": took}))
        context = dict(env.context)
        if instr.as_:
            context[instr.as_] = result
        return env.evolve(cursor=env.cursor + 1, context=context, attempt=1)

    async def _publish(
        self,
        cf: CompiledFlow,
        instr: Instr,
        env: Envelope,
        entries: list[LedgerEntry],
        emits: list[tuple[Envelope, float]],
    ) -> Envelope:
        body = instr.mapping.apply(env.view()) if instr.mapping else env.body
        children = self.topics.children(env, instr.topic, body)
        delay = instr.delay or 0.0
        if children and cf.to_ahead[env.cursor + 1]:
            # A later to: may fail and retry from there; publish now, deduplicated so a redo
            # after a crash does not emit twice.
            result = await self.transport.publish(
                children, dedupe_key=f"emit:{env.id}:{env.cursor}", delay=delay
            )
            if result.duplicate_of is None:
                self._received_children(children)
        else:
            emits.extend((c, delay) for c in children)
        entries.append(
            self._entry(env, cf, "step", instr, "ok", detail={"published": [c.id for c in children]})
        )
        return env.evolve(cursor=env.cursor + 1)

    async def _failed(
        self,
        delivery: Delivery,
        cf: CompiledFlow,
        instr: Instr,
        env: Envelope,
        exc: BaseException,
        entries: list[LedgerEntry],
    ) -> None:
        chain = error_chain(exc)
        error = chain[0]
        bound = log.bind(message_id=env.id, flow=cf.name, step=instr.label, attempt=env.attempt)
        retryable = isinstance(exc, RetryableError) or not isinstance(
            exc, (PermanentError, StepFailure, MappingError, JMESPathError)
        )
        if not retryable:
            entries.append(self._entry(env, cf, "step", instr, "fail", error=error))
            bound.warning("dead_letter", error=error, reason="permanent")
            await self._dead(delivery, cf, env, error, chain, entries)
            return
        policy = instr.retry or cf.flow.retry
        retry_after = getattr(exc, "retry_after", None)
        verdict = decide(
            policy,
            attempt=env.attempt,
            first_seen=env.first_seen,
            now=self.clock(),
            retry_after=retry_after,
        )
        if verdict.retry:
            entries.append(
                self._entry(
                    env, cf, "step", instr, "retry", error=error, detail={"delay": round(verdict.delay, 3)}
                )
            )
            bound.info("retry_scheduled", error=error, delay=round(verdict.delay, 3))
            await delivery.retry(env.evolve(attempt=env.attempt + 1), verdict.delay, entries)
            self._finished(cf, env, "retried")
            return
        entries.append(
            self._entry(env, cf, "step", instr, "fail", error=error, detail={"reason": verdict.reason})
        )
        bound.warning("dead_letter", error=error, reason=verdict.reason)
        await self._dead(delivery, cf, env, f"{error} ({verdict.reason})", chain, entries)

    async def _dead(
        self,
        delivery: Delivery,
        cf: CompiledFlow,
        env: Envelope,
        error: str,
        chain: list[str],
        entries: list[LedgerEntry],
    ) -> None:
        await delivery.dead(env, error, chain, entries)
        self._finished(cf, env, "dead")
        if not cf.flow.dead_letter.enabled:
            # The flow asked not to keep dead letters: drop it, the ledger keeps the story.
            await self.transport.purge([env.id])

    def _entry(
        self,
        env: Envelope,
        cf: CompiledFlow,
        kind: str,
        instr: Instr,
        outcome: str | None,
        *,
        error: str | None = None,
        detail: Any = None,
    ) -> LedgerEntry:
        if detail is None:
            detail = {}
        elif not isinstance(detail, dict):
            detail = {"note": detail}
        return LedgerEntry(
            env.id,
            kind,
            self.clock(),
            flow=cf.name,
            step=instr.label,
            attempt=env.attempt,
            outcome=outcome,
            error=error,
            detail=detail,
        )


def ledger_lines(entries: Sequence[LedgerEntry]) -> list[str]:
    """Human-readable history, one line an entry (for the CLI)."""
    lines = []
    for e in entries:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.at)) + f".{int(e.at % 1 * 1000):03d}"
        parts = [stamp, e.kind]
        if e.step:
            parts.append(e.step)
        if e.attempt:
            parts.append(f"attempt {e.attempt}")
        if e.outcome:
            parts.append(e.outcome)
        if e.error:
            parts.append(f"error: {e.error}")
        if e.detail:
            parts.append(str(e.detail))
        lines.append("  ".join(parts))
    return lines
