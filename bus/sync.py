"""Sync API flows: ``from: {http: "GET /api/tickets/{id}"}`` runs its steps inline and answers.

No transport and no ledger (a query needs no durability, and must be fast): the request
becomes an envelope whose body is ``{"params", "query", "body"}``, the steps run in order, and
a ``reply`` step answers. Failures become :class:`SyncFailure` with the HTTP status to send:

    validate failed → 400 · connector 404 → 404 · other permanent → 502
    retryable, throttled, circuit open → 503 + Retry-After · timeout → 504 · no reply → 204

``to:`` calls go through the same :class:`Calls` as the durable runner (throttle, breaker),
plus an optional result cache (``cache: 30s``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from jmespath.exceptions import JMESPathError

from bus.calls import Calls, call_context
from bus.canary import VARIANT, route_variants
from bus.envelope import EVENT, SOURCE, TRACEPARENT, Envelope
from bus.errors import (
    BackpressureError,
    MappingError,
    PermanentError,
    RetryableError,
    TielineError,
    TransportError,
)
from bus.flow import CompiledFlow, Instr
from bus.observe import Observer
from bus.steps import StepFailure, publish_delay, run_pure
from bus.transport.base import Transport

log = structlog.get_logger("tieline.sync")
DEFAULT_TIMEOUT = 30.0


class SyncFailure(TielineError):
    """A sync flow could not answer normally; ``status`` and ``code`` say how to refuse."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.details, self.retry_after = status, code, details, retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": str(self), "details": self.details}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any = None  # JSON-able; None with 204
    headers: dict[str, str] = field(default_factory=dict)


class SyncFlows:
    def __init__(self, flows: Mapping[str, CompiledFlow], calls: Calls, transport: Transport, *,
                 topics: Any = None, observer: Observer | None = None,
                 clock: Callable[[], float] = time.time):
        """``topics`` (the runner's :class:`Topics`) lets ``publish`` steps fan out."""
        self.flows, self.calls, self.transport, self.topics = flows, calls, transport, topics
        self.observer = observer or Observer()
        self.clock = clock

    def served(self) -> list[CompiledFlow]:
        """The enabled flows with an HTTP source that own their route (canaries ride along)."""
        out = []
        for cf in self.flows.values():
            primary = self.flows.get(cf.canary_of) if cf.canary_of else None
            if cf.flow.enabled and hasattr(cf.flow.source, "method") and not (
                    primary is not None and primary.flow.enabled):
                out.append(cf)
        return out

    async def answer(self, cf: CompiledFlow, params: Mapping[str, str], query: Mapping[str, str],
                     body: Any, headers: Mapping[str, str] | None = None) -> Answer:
        """Run ``cf`` for one request; raises SyncFailure for the refusals listed above."""
        src = cf.flow.source
        hdrs = {SOURCE: "http", EVENT: f"{src.method} {src.path}"}  # type: ignore[union-attr]
        if headers and headers.get(TRACEPARENT):
            hdrs[TRACEPARENT] = headers[TRACEPARENT]
        view_body = {"params": dict(params), "query": dict(query), "body": body}
        (env,) = route_variants(self.flows, [Envelope.new(cf.name, view_body, hdrs,
                                                          flow_version=cf.version)])
        cf = self.flows[env.flow]
        self.observer.received(cf.name)
        self.observer.started(cf.name)
        started = self.clock()
        outcome, status = "failed", 500
        try:
            answer = await asyncio.wait_for(self._run(cf, env), cf.flow.timeout or DEFAULT_TIMEOUT)
            outcome, status = ("filtered" if answer.status == 204 else "delivered"), answer.status
            return answer
        except TimeoutError:
            status = 504
            raise SyncFailure(504, "timeout", f"flow {cf.name!r} did not answer within "
                              f"{cf.flow.timeout or DEFAULT_TIMEOUT:g}s") from None
        except SyncFailure as exc:
            status = exc.status
            raise
        finally:
            took = self.clock() - started
            self.observer.finished(cf.name, outcome, took, variant=env.headers.get(VARIANT, ""))
            log.info("sync_flow", flow=cf.name, message_id=env.id, status=status,
                     ms=round(took * 1000, 2))

    async def _run(self, cf: CompiledFlow, env: Envelope) -> Answer:
        program = cf.program
        while env.cursor < len(program):
            instr = program[env.cursor]
            try:
                if instr.kind == "reply":
                    body = instr.mapping.apply(env.view()) if instr.mapping else env.body
                    return Answer(instr.status, body)
                if instr.kind == "to":
                    env = await self._call(cf, instr, env)
                elif instr.kind == "publish":
                    env = await self._publish(instr, env)
                elif instr.kind == "split":
                    raise StepFailure("a sync flow cannot split")  # refused at load already
                else:
                    out = run_pure(instr, env, env.cursor)
                    if out.filtered:
                        return Answer(204)
                    env = out.envelope
            except (StepFailure, MappingError, JMESPathError) as exc:
                if instr.kind == "validate":
                    raise SyncFailure(400, "invalid_request", str(exc), {"step": instr.label}) from exc
                raise SyncFailure(500, "flow_failed", f"{instr.label}: {exc}",
                                  {"step": instr.label}) from exc
        return Answer(204)

    async def _call(self, cf: CompiledFlow, instr: Instr, env: Envelope) -> Envelope:
        payload = instr.mapping.apply(env.view()) if instr.mapping else env.body

        async def make() -> Any:
            hold = await self.calls.admit(instr.connector, instr.rate, instr.breaker)
            if hold is not None:
                raise SyncFailure(503, hold.reason, f"connector {instr.connector!r} is "
                                  f"{hold.reason.replace('_', ' ')}; try again later",
                                  {"step": instr.label}, hold.delay)
            ctx = call_context(cf.name, instr.label, env, env.idempotency_key(env.cursor))
            return await self.calls.call(instr.connector, instr.action, payload, ctx,
                                         breaker=instr.breaker)

        details = {"step": instr.label, "connector": instr.connector}
        try:
            if instr.cache:
                result = await self.calls.cached(instr.connector, instr.action, payload,
                                                 instr.cache, make)
            else:
                result = await make()
        except PermanentError as exc:
            details["status"] = exc.status
            if exc.status == 404:
                raise SyncFailure(404, "not_found", str(exc), details) from exc
            raise SyncFailure(502, "upstream_error", str(exc), details) from exc
        except RetryableError as exc:
            raise SyncFailure(503, "upstream_unavailable", str(exc), details,
                              exc.retry_after or 1.0) from exc
        context = dict(env.context)
        if instr.as_:
            context[instr.as_] = result
        return env.evolve(cursor=env.cursor + 1, context=context)

    async def _publish(self, instr: Instr, env: Envelope) -> Envelope:
        body = instr.mapping.apply(env.view()) if instr.mapping else env.body
        children = self.topics.children(env, instr.topic, body) if self.topics else []
        if children:
            try:
                await self.transport.publish(children, delay=publish_delay(instr, env))
            except BackpressureError as exc:
                raise SyncFailure(503, "backlog_full", str(exc), None, exc.retry_after) from exc
            except TransportError as exc:
                raise SyncFailure(503, "transport_unavailable", str(exc), None, 1.0) from exc
            for child in children:
                self.observer.received(child.flow)
        return env.evolve(cursor=env.cursor + 1)
