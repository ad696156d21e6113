"""Observation hooks: the runner and ingress report what happens; metrics and dashboards listen.

The engine calls an :class:`Observer`; it never imports Prometheus or the dashboard. Several
observers can be combined with :class:`Observers`. Calls are synchronous and must be cheap.
"""

from __future__ import annotations

from collections.abc import Iterable


class Observer:
    """Every hook is a no-op; subclasses override what they need."""

    def received(self, flow: str, count: int = 1) -> None:
        """``count`` new messages were committed for ``flow`` (ingress, topic, split)."""

    def started(self, flow: str) -> None:
        """A message of ``flow`` began a processing attempt."""

    def finished(self, flow: str, outcome: str, latency: float, *, variant: str = "") -> None:
        """An attempt ended: outcome delivered | filtered | retried | dead | waiting.

        ``latency`` is seconds since the message was first seen (end to end for terminal states).
        """

    def connector_call(
        self, connector: str, action: str, outcome: str, duration: float
    ) -> None:
        """A ``to:`` call ended: outcome ok | retryable | permanent | error (unclassified)."""

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """A state reading (circuit breaker state, throttle wait, DLQ depth...)."""

    def failed(self, flow: str, step: str, message_id: str, error: str, retrying: bool) -> None:
        """A step failed for a message; ``retrying`` says whether it will be tried again."""


class Observers(Observer):
    def __init__(self, observers: Iterable[Observer] = ()):
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def received(self, flow: str, count: int = 1) -> None:
        for o in self.observers:
            o.received(flow, count)

    def started(self, flow: str) -> None:
        for o in self.observers:
            o.started(flow)

    def finished(self, flow: str, outcome: str, latency: float, *, variant: str = "") -> None:
        for o in self.observers:
            o.finished(flow, outcome, latency, variant=variant)

    def connector_call(self, connector: str, action: str, outcome: str, duration: float) -> None:
        for o in self.observers:
            o.connector_call(connector, action, outcome, duration)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        for o in self.observers:
            o.gauge(name, value, **labels)

    def failed(self, flow: str, step: str, message_id: str, error: str, retrying: bool) -> None:
        for o in self.observers:
            o.failed(flow, step, message_id, error, retrying)
