"""Compressed time for flow tests: every wait a flow can schedule becomes a few milliseconds.

Retry backoff, publish delays and circuit-breaker cool-downs are capped; attempt counts and
deadlines stay as configured, so "retried twice, then delivered" still means exactly that.
Rate limits are dropped (a throttled call waits, it does not fail). Nothing global is patched:
the compiled flows are rewritten and handed to the runtime like a reload would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bus.config.loader import parse_duration
from bus.config.model import RetryPolicy
from bus.flow import CompiledFlow, Instr

RETRY_FIRST = 0.01  # seconds: first retry delay
RETRY_CAP = 0.05  # seconds: longest retry delay, publish delay and breaker cool-down


def fast_retry(policy: RetryPolicy) -> RetryPolicy:
    return replace(policy, initial_delay=min(policy.initial_delay, RETRY_FIRST),
                   max_delay=min(policy.max_delay, RETRY_CAP))


class _CappedDelay:
    """A ``delay_expr`` whose result (seconds or a duration string) is capped at RETRY_CAP."""

    def __init__(self, expr: Any):
        self.expr = expr
        self.source = expr.source

    def search(self, view: Mapping[str, Any]) -> Any:
        value = self.expr.search(view)
        try:
            return min(parse_duration(value), RETRY_CAP)
        except (TypeError, ValueError):
            return value  # let the runner report the bad value as it would


def _instr(i: Instr) -> Instr:
    changes: dict[str, Any] = {"rate": None}
    if i.retry is not None:
        changes["retry"] = fast_retry(i.retry)
    if i.delay:
        changes["delay"] = min(i.delay, RETRY_CAP)
    if i.delay_expr is not None:
        changes["delay_expr"] = _CappedDelay(i.delay_expr)
    if i.breaker is not None:
        changes["breaker"] = replace(i.breaker, cooldown=min(i.breaker.cooldown, RETRY_CAP))
    return replace(i, **changes)


def compress(flows: Mapping[str, CompiledFlow]) -> dict[str, CompiledFlow]:
    """The same flows with every delay capped (see the module docstring)."""
    return {
        name: replace(cf, flow=replace(cf.flow, retry=fast_retry(cf.flow.retry)),
                      program=tuple(_instr(i) for i in cf.program))
        for name, cf in flows.items()
    }
