"""Rolling per-minute statistics for the dashboard: success rate, latency percentiles, throughput.

An Observer keeping the last hour in one-minute slots per flow and per connector. Latencies go
into fixed log-scale buckets, so merging slots is adding counts and a percentile is a walk up
the buckets (accurate to one bucket: ~12%).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.observe import Observer

# 1 ms · 1.25^i up to about an hour.
EDGES = tuple(0.001 * 1.25**i for i in range(int(math.log(3600 / 0.001, 1.25)) + 2))
SLOTS = 60


@dataclass(slots=True)
class Slot:
    minute: int
    ok: int = 0
    failed: int = 0
    retried: int = 0
    filtered: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * (len(EDGES) + 1))


@dataclass(frozen=True, slots=True)
class Failure:
    at: float
    flow: str
    step: str
    message_id: str
    error: str
    retrying: bool

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "flow": self.flow, "step": self.step, "message_id": self.message_id,
                "error": self.error, "retrying": self.retrying}


class Series:
    """One flow's or connector's last hour."""

    def __init__(self) -> None:
        self.slots: deque[Slot] = deque(maxlen=SLOTS)

    def slot(self, minute: int) -> Slot:
        if not self.slots or self.slots[-1].minute != minute:
            self.slots.append(Slot(minute))
        return self.slots[-1]

    def summary(self, now_minute: int, minutes: int) -> dict[str, Any]:
        ok = failed = retried = filtered = 0
        hist = [0] * (len(EDGES) + 1)
        for s in self.slots:
            if s.minute > now_minute - minutes:
                ok, failed, retried, filtered = ok + s.ok, failed + s.failed, retried + s.retried, filtered + s.filtered
                hist = [a + b for a, b in zip(hist, s.hist, strict=True)]
        done = ok + failed
        return {
            "count": done + filtered,
            "ok": ok,
            "failed": failed,
            "retried": retried,
            "filtered": filtered,
            "success_rate": round(ok / done, 4) if done else None,
            "per_second": round((done + filtered) / (minutes * 60), 4),
            "p50_ms": _percentile(hist, 0.50),
            "p95_ms": _percentile(hist, 0.95),
            "p99_ms": _percentile(hist, 0.99),
        }


def _percentile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            edge = EDGES[i] if i < len(EDGES) else EDGES[-1]
            return round(edge * 1000, 2)
    return round(EDGES[-1] * 1000, 2)


class Stats(Observer):
    def __init__(self, clock: Callable[[], float] = time.time, keep_failures: int = 50):
        self.clock = clock
        self.flows: dict[str, Series] = {}
        self.connectors: dict[str, Series] = {}
        self.failures: deque[Failure] = deque(maxlen=keep_failures)

    def _slot(self, table: dict[str, Series], name: str) -> Slot:
        series = table.get(name)
        if series is None:
            series = table[name] = Series()
        return series.slot(int(self.clock() // 60))

    def finished(self, flow: str, outcome: str, latency: float, *, variant: str = "") -> None:
        slot = self._slot(self.flows, flow)
        if outcome == "delivered":
            slot.ok += 1
        elif outcome == "dead":
            slot.failed += 1
        elif outcome == "filtered":
            slot.filtered += 1
        elif outcome == "retried":
            slot.retried += 1
            return
        else:
            return
        slot.hist[bisect.bisect_left(EDGES, latency)] += 1

    def connector_call(self, connector: str, action: str, outcome: str, duration: float) -> None:
        slot = self._slot(self.connectors, connector)
        if outcome == "ok":
            slot.ok += 1
        else:
            slot.failed += 1
        slot.hist[bisect.bisect_left(EDGES, duration)] += 1

    def failed(self, flow: str, step: str, message_id: str, error: str, retrying: bool) -> None:
        self.failures.append(Failure(self.clock(), flow, step, message_id, error, retrying))

    def dump(self) -> dict[str, Any]:
        """The raw slots and failures, as JSON-ready data ``merged`` adds up (histograms sparse)."""
        def series(table: dict[str, Series]) -> dict[str, list]:
            return {name: [[s.minute, s.ok, s.failed, s.retried, s.filtered,
                            {str(i): n for i, n in enumerate(s.hist) if n}] for s in ser.slots]
                    for name, ser in table.items()}
        return {"flows": series(self.flows), "connectors": series(self.connectors),
                "failures": [f.to_dict() for f in self.failures]}

    @classmethod
    def merged(cls, dumps: list[dict[str, Any]], clock: Callable[[], float] = time.time) -> Stats:
        """One Stats holding the sum of several processes' ``dump()``s (counts and latency
        buckets add up per minute; the most recent failures are kept)."""
        out = cls(clock)
        for d in dumps:
            for table, rows in ((out.flows, d["flows"]), (out.connectors, d["connectors"])):
                for name, slots in rows.items():
                    by_minute = {s.minute: s for s in table.setdefault(name, Series()).slots}
                    for minute, ok, failed, retried, filtered, hist in slots:
                        slot = by_minute.get(minute)
                        if slot is None:
                            slot = by_minute[minute] = Slot(minute)
                        slot.ok += ok
                        slot.failed += failed
                        slot.retried += retried
                        slot.filtered += filtered
                        for i, n in hist.items():
                            slot.hist[int(i)] += n
                    ordered = sorted(by_minute.values(), key=lambda s: s.minute)
                    table[name].slots.clear()
                    table[name].slots.extend(ordered[-SLOTS:])
        failures = sorted((f for d in dumps for f in d["failures"]), key=lambda f: f["at"])
        out.failures.extend(Failure(**f) for f in failures[-out.failures.maxlen:])  # type: ignore[misc]
        return out

    def snapshot(self) -> dict[str, Any]:
        minute = int(self.clock() // 60)
        windows = {}
        for label, minutes in (("5m", 5), ("60m", 60)):
            windows[label] = {
                "flows": {n: s.summary(minute, minutes) for n, s in sorted(self.flows.items())},
                "connectors": {n: s.summary(minute, minutes) for n, s in sorted(self.connectors.items())},
            }
        return {
            "at": self.clock(),
            "windows": windows,
            "recent_failures": [f.to_dict() for f in reversed(self.failures)],
        }
