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

from bus import saga
from bus.calls import Calls, Hold, call_context
from bus.canary import VARIANT, route_variants
from bus.envelope import Envelope
from bus.errors import ConnectorError, MappingError, PermanentError, RetryableError
from bus.flow import CompiledFlow, Instr
from bus.observe import Observer
from bus.retry import decide
from bus.steps import StepFailure, publish_delay, run_pure, split_children
from bus.transport.base import Delivery, LedgerEntry, MessageState, Transport
from connectors.base import Connector

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
        self.flows = flows
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
        return route_variants(self.flows, out)


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
        calls: Calls | None = None,
    ):
        """``calls`` carries throttles, breakers and cache; share it with sync API flows."""
        self.observer = observer or Observer()
        self.flows = flows
        self.connectors = connectors
        self.transport = transport
        self.topics = Topics(flows)
        self.clock = clock
        self.calls = calls or Calls(connectors, observer=self.observer)
        self.saga = saga.Compensator(self)
        # Every compiled version this process has run: a message that already started keeps
        # running on its version after a reload.
        self.versions = {(n, cf.version): cf for n, cf in flows.items()}

    def update(self, flows: Mapping[str, CompiledFlow], connectors: Mapping[str, Connector]) -> None:
        """Switch to reloaded flows and connectors (messages under way keep their version)."""
        self.versions.update({(n, cf.version): cf for n, cf in flows.items()})
        self.flows, self.connectors, self.topics = flows, connectors, Topics(flows)
        self.calls.connectors = connectors

    def flow_for(self, env: Envelope) -> CompiledFlow | None:
        """The version ``env`` started on if it has started; otherwise the current one."""
        started = env.cursor > 0 or env.attempt > 1
        if started:
            known = self.versions.get((env.flow, env.flow_version))
            if known is not None:
                return known
        return self.flows.get(env.flow)

    def start(self) -> None:
        """Subscribe a consumer per enabled flow."""
        for cf in self.flows.values():
            if cf.flow.enabled:
                self.transport.consume(cf.name, self.handle, concurrency=cf.flow.concurrency)

    # ----- one message -------------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        cf = self.flow_for(env)
        if cf is None:
            await delivery.dead(env, f"flow {env.flow!r} is not defined", [])
            return
        self.observer.started(cf.name)
        entries: list[LedgerEntry] = []
        emits: list[tuple[Envelope, float]] = []
        program = cf.program
        if cf.saga:
            env = self.saga.prepare(cf, env, entries)
            if saga.compensating(env):  # resumed (retry, crash, replay) mid-compensation
                await self.saga.run(delivery, cf, env, entries)
                return
        while env.cursor < len(program):
            cursor = env.cursor
            instr = program[cursor]
            if instr.kind == "to":
                hold = await self.calls.admit(instr.connector, instr.rate, instr.breaker)
                if hold is not None:
                    await self._hold(delivery, cf, instr, env, hold, entries)
                    return
                try:
                    env = await self._call(cf, instr, env, entries)
                except (ConnectorError, Exception) as exc:  # classified in _failed
                    await self._failed(delivery, cf, instr, env, exc, entries)
                    return
                if cf.to_ahead[env.cursor]:
                    await delivery.checkpoint(env, entries)
                    entries = []
            elif instr.kind in ("publish", "split"):
                try:
                    if instr.kind == "split":
                        await self._split(delivery, cf, instr, env, entries, emits)
                        return
                    env = await self._publish(cf, instr, env, entries, emits)
                except (MappingError, JMESPathError, StepFailure) as exc:
                    await self._failed(delivery, cf, instr, env, StepFailure(str(exc)), entries)
                    return
            elif instr.kind == "reply":  # only sync flows answer; here it just ends the flow
                entries.append(self._entry(env, cf, "step", instr, "skipped", detail="no request"))
                break
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
        await self._deliver(delivery, cf, env, entries, emits)

    async def _deliver(self, delivery: Delivery, cf: CompiledFlow, env: Envelope,
                       entries: list[LedgerEntry], emits: Sequence[tuple[Envelope, float]],
                       note: str | None = None) -> None:
        detail: dict[str, Any] = {"note": note} if note else {}
        if VARIANT in env.headers:
            detail[VARIANT] = env.headers[VARIANT]
        entries.append(LedgerEntry(env.id, "delivered", self.clock(), flow=cf.name, detail=detail))
        await delivery.complete(MessageState.DELIVERED, env, entries, emits)
        self._finished(cf, env, "delivered")
        if emits:
            self._received_children([c for c, _ in emits])
        log.debug("delivered", message_id=env.id, correlation_id=env.correlation_id, flow=cf.name,
                  flow_version=cf.version, outcome="delivered",
                  duration=round(self.clock() - env.first_seen, 4))

    def _finished(self, cf: CompiledFlow, env: Envelope, outcome: str) -> None:
        self.observer.finished(cf.name, outcome, self.clock() - env.first_seen,
                               variant=env.headers.get(VARIANT, ""))

    def _received_children(self, children: Sequence[Envelope]) -> None:
        for child in children:
            self.observer.received(child.flow)

    async def _call(
        self, cf: CompiledFlow, instr: Instr, env: Envelope, entries: list[LedgerEntry]
    ) -> Envelope:
        payload = instr.mapping.apply(env.view()) if instr.mapping else env.body
        ctx = call_context(cf.name, instr.label, env, env.idempotency_key(env.cursor))
        started = self.clock()
        result = await self.calls.call(instr.connector, instr.action, payload, ctx,
                                       breaker=instr.breaker)
        took = round((self.clock() - started) * 1000, 2)
        entries.append(self._entry(env, cf, "step", instr, "ok", detail={"ms": took}))
        context = dict(env.context)
        if instr.as_:
            context[instr.as_] = result
        if instr.undo is not None:
            saga.remember(context, env.cursor, result)
        return env.evolve(cursor=env.cursor + 1, context=context, attempt=1)

    async def _hold(self, delivery: Delivery, cf: CompiledFlow, instr: Instr, env: Envelope,
                    hold: Hold, entries: list[LedgerEntry]) -> None:
        """Throttled or circuit open: run this step again later, with the same attempt."""
        delay = round(hold.delay, 3)
        entries.append(self._entry(env, cf, "step", instr, hold.reason, detail={"delay": delay}))
        log.info(hold.reason, message_id=env.id, flow=cf.name, step=instr.label, delay=delay)
        await delivery.retry(env, hold.delay, entries)
        self._finished(cf, env, "waiting")

    async def _split(self, delivery: Delivery, cf: CompiledFlow, instr: Instr, env: Envelope,
                     entries: list[LedgerEntry], emits: list[tuple[Envelope, float]]) -> None:
        """End this message; each item continues as its own message at the next instruction."""
        children = split_children(instr, env, env.cursor)
        note = f"split into {len(children)}"
        entries.append(self._entry(env, cf, "step", instr, "ok", detail={"split": len(children)}))
        await self._deliver(delivery, cf, env, entries, [*emits, *((c, 0.0) for c in children)],
                            note=note)

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
        delay = publish_delay(instr, env)
        if children and instr.once_per is not None:
            # Only the first message per key publishes; the transport's dedupe makes it atomic.
            key = instr.once_per.search(env.view())
            result = await self.transport.publish(
                children, dedupe_key=f"once:{cf.name}:{instr.topic}:{key}", delay=delay
            )
            if result.duplicate_of is not None:
                entries.append(self._entry(env, cf, "step", instr, "skipped",
                                           detail={"once_per": str(key), "first": result.duplicate_of}))
                return env.evolve(cursor=env.cursor + 1)
            self._received_children(children)
        elif children and cf.to_ahead[env.cursor + 1]:
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
        bound = log.bind(message_id=env.id, correlation_id=env.correlation_id, flow=cf.name,
                         flow_version=cf.version, step=instr.label, attempt=env.attempt,
                         **({"connector": instr.connector, "action": instr.action} if instr.kind == "to" else {}))
        retryable = isinstance(exc, RetryableError) or not isinstance(
            exc, (PermanentError, StepFailure, MappingError, JMESPathError)
        )
        if not retryable:
            entries.append(self._entry(env, cf, "step", instr, "fail", error=error))
            bound.warning("dead_letter", error=error, reason="permanent")
            self.observer.failed(cf.name, instr.label, env.id, error, False)
            await self._give_up(delivery, cf, instr, env, error, chain, entries)
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
            self.observer.failed(cf.name, instr.label, env.id, error, True)
            await delivery.retry(env.evolve(attempt=env.attempt + 1), verdict.delay, entries)
            self._finished(cf, env, "retried")
            return
        entries.append(
            self._entry(env, cf, "step", instr, "fail", error=error, detail={"reason": verdict.reason})
        )
        bound.warning("dead_letter", error=error, reason=verdict.reason)
        self.observer.failed(cf.name, instr.label, env.id, error, False)
        await self._give_up(delivery, cf, instr, env, f"{error} ({verdict.reason})", chain,
                            entries)

    async def _give_up(self, delivery: Delivery, cf: CompiledFlow, instr: Instr, env: Envelope,
                       error: str, chain: list[str], entries: list[LedgerEntry]) -> None:
        """Dead-letter, after undoing the completed saga steps if there are any."""
        if saga.pending(env):
            env = saga.begin(env, error, chain, instr.label)
            await self.saga.run(delivery, cf, env, entries)
        else:
            await self._dead(delivery, cf, env, error, chain, entries)

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
