"""Prometheus metrics: an Observer that counts, plus readings taken at scrape time.

Each bus owns its own CollectorRegistry (no process globals), so tests and several buses in one
process do not mix their numbers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bus.observe import Observer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics(Observer):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.received_total = Counter("tieline_flow_received", "Messages received per flow", ["flow"], registry=r)
        self.outcomes = Counter(
            "tieline_flow_outcomes", "Processing attempts by outcome: delivered, filtered, retried, dead, waiting",
            ["flow", "outcome", "variant"], registry=r,
        )
        self.in_flight = Gauge("tieline_flow_in_flight", "Messages being processed now", ["flow"], registry=r)
        self.concurrency = Gauge(
            "tieline_flow_concurrency",
            "Handler slots per flow in this process (its concurrency): in_flight at this value with "
            "a growing backlog means the flow is held by its cap", ["flow"], registry=r,
        )
        self.e2e = Histogram(
            "tieline_flow_latency_seconds", "From first seen to delivered/filtered/dead",
            ["flow"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.calls = Counter(
            "tieline_connector_calls", "Connector action calls by outcome (ok, retryable, permanent, error)",
            ["connector", "action", "outcome"], registry=r,
        )
        self.call_latency = Histogram(
            "tieline_connector_call_seconds", "Connector action call duration",
            ["connector", "action"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ingress = Counter(
            "tieline_http_requests", "HTTP requests by route template and status", ["route", "status"], registry=r,
        )
        self.dlq_depth = Gauge("tieline_dead_letters", "Dead letters waiting, per flow", ["flow"], registry=r)
        self.dlq_oldest = Gauge(
            "tieline_dead_letter_oldest_age_seconds", "Age of the oldest dead letter, per flow", ["flow"], registry=r
        )
        self.backlog = Gauge("tieline_backlog", "Messages queued or scheduled, per flow", ["flow"], registry=r)
        self.readings = Gauge("tieline_state", "State readings (circuit breakers, throttles)", ["name", "labels"], registry=r)
        self._scrape_hooks: list[Callable[[Metrics], Awaitable[None]]] = []
        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client's labels() takes a lock and
        builds a tuple on every call, a measurable share of each message's cost (profiled)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # ----- Observer ----------------------------------------------------------------------
    def received(self, flow: str, count: int = 1) -> None:
        self.child(self.received_total, flow).inc(count)

    def started(self, flow: str) -> None:
        self.child(self.in_flight, flow).inc()

    def finished(self, flow: str, outcome: str, latency: float, *, variant: str = "") -> None:
        self.child(self.in_flight, flow).dec()
        self.child(self.outcomes, flow, outcome, variant or "primary").inc()
        if outcome in ("delivered", "filtered", "dead"):
            self.child(self.e2e, flow).observe(latency)

    def connector_call(self, connector: str, action: str, outcome: str, duration: float) -> None:
        self.child(self.calls, connector, action, outcome).inc()
        self.child(self.call_latency, connector, action).observe(duration)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        self.readings.labels(name, text).set(value)

    # ----- scrape --------------------------------------------------------------------------
    def on_scrape(self, hook: Callable[[Metrics], Awaitable[None]]) -> None:
        """Register a coroutine that refreshes readings (backlog, DLQ) before each scrape."""
        self._scrape_hooks.append(hook)

    async def render(self) -> bytes:
        for hook in self._scrape_hooks:
            await hook(self)
        return generate_latest(self.registry)

    async def render_families(self) -> list[Any]:
        """The metric families as ``render`` would write them (readings refreshed), for a
        caller that adds samples first (bus.worker_reports)."""
        for hook in self._scrape_hooks:
            await hook(self)
        return list(self.registry.collect())


async def flow_slots(metrics: Metrics, concurrency: dict[str, int]) -> None:
    """Each consumed flow's concurrency (nothing in a process that only serves)."""
    for flow, slots in concurrency.items():
        metrics.child(metrics.concurrency, flow).set(slots)


async def transport_readings(metrics: Metrics, transport, flows: list[str]) -> None:  # noqa: ANN001
    """Backlog and dead-letter depth/age per flow, read from the transport."""
    now = time.time()
    for flow in flows:
        metrics.backlog.labels(flow).set(await transport.backlog(flow))
        depth, oldest = await transport.dead_letter_summary(flow)
        metrics.dlq_depth.labels(flow).set(depth)
        metrics.dlq_oldest.labels(flow).set(now - (oldest if oldest is not None else now))
