"""The policy around every ``to:`` call: throttle, circuit breaker, result cache, metrics.

Shared by the durable runner and sync API flows, so a connector's rate limit and breaker
hold for all its callers. :meth:`Calls.admit` says whether a call may go now (or how long
to hold the message); :meth:`Calls.call` makes it and records the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bus.breaker import Breakers
from bus.config.model import BreakerPolicy, Rate
from bus.envelope import TRACEPARENT, Envelope
from bus.errors import PermanentError, RetryableError
from bus.observe import Observer
from bus.shared import Cache
from bus.shared.memory import MemoryCache
from bus.throttle import Throttle
from connectors.base import CallContext, Connector


def call_context(flow: str, step: str, env: Envelope, idempotency_key: str) -> CallContext:
    return CallContext(
        message_id=env.id,
        flow=flow,
        step=step,
        idempotency_key=idempotency_key,
        attempt=env.attempt,
        correlation_id=env.correlation_id,
        traceparent=env.headers.get(TRACEPARENT),
    )


@dataclass(frozen=True, slots=True)
class Hold:
    """The call must not go now: hold the message ``delay`` seconds (no attempt used up)."""

    reason: str  # throttled | circuit_open
    delay: float


class Calls:
    def __init__(
        self,
        connectors: Mapping[str, Connector],
        *,
        observer: Observer | None = None,
        throttle: Throttle | None = None,
        breakers: Breakers | None = None,
        cache: Cache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.connectors = connectors
        self.observer = observer or Observer()
        self.throttle = throttle or Throttle()
        self.breakers = breakers or Breakers(clock=clock, observer=self.observer)
        self.cache: Cache = cache or MemoryCache(clock)
        self.clock = clock

    async def admit(self, connector: str, rate: Rate | None,
                    breaker: BreakerPolicy | None) -> Hold | None:
        """None when a call to ``connector`` may go now (its token taken), else a Hold."""
        cb = self.breakers.get(connector, breaker)
        if cb is not None:
            wait = cb.allow()
            if wait > 0:
                return Hold("circuit_open", wait)
        wait = await self.throttle.acquire(connector, rate)
        if wait > 0:
            if cb is not None:
                cb.cancel()
            return Hold("throttled", wait)
        return None

    async def call(self, connector: str, action: str, payload: Any, ctx: CallContext, *,
                   breaker: BreakerPolicy | None = None) -> Any:
        """Call the action; the breaker (if any) and the observer learn the outcome."""
        cb = self.breakers.get(connector, breaker)
        started = self.clock()
        try:
            result = await self.connectors[connector].call(action, payload, ctx)
        except asyncio.CancelledError:
            if cb is not None:
                cb.cancel()
            raise
        except BaseException as exc:
            outcome = (
                "retryable" if isinstance(exc, RetryableError)
                else "permanent" if isinstance(exc, PermanentError) else "error"
            )
            self.observer.connector_call(connector, action, outcome, self.clock() - started)
            if cb is not None:
                cb.record(failed=outcome != "permanent")
            raise
        self.observer.connector_call(connector, action, "ok", self.clock() - started)
        if cb is not None:
            cb.record(failed=False)
        return result

    async def cached(self, connector: str, action: str, payload: Any, ttl: float,
                     make: Callable[[], Any]) -> Any:
        """The result cached under (connector, action, payload), else ``await make()`` kept ``ttl`` s."""
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        digest = hashlib.sha256(f"{connector}.{action}:".encode() + canonical).hexdigest()
        key = f"call:{digest}"
        hit = await self.cache.get(key)
        if hit is not None:
            return orjson.loads(hit)
        result = await make()
        await self.cache.set(key, orjson.dumps(result), ttl)
        return result
