"""What a fixed-rate load saw from the sender's side, shared by the e2e generators."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import httpx


@dataclass
class Load:
    """What one fixed-rate run saw from the sender's side."""

    rate: float
    duration: float
    sent: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    skipped: int = 0  # sends not made because ``inflight`` requests were already open
    retry_after: int = 0  # 503 answers that carried Retry-After
    ack_ms: list[float] = field(default_factory=list)  # request → 202 (response time)
    backlog: list[int] = field(default_factory=list)  # /readyz samples, one a second
    # The generator's own longest pause: the most its send loop (a 2 ms sleep) ran late. Past
    # ~50 ms the sender itself was held up (the machine, not the bus): a burst of late sends
    # follows, and their latency counts from when they were due.
    paused_ms: float = 0.0

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    def achieved(self) -> float:
        return self.sent / self.duration


async def sample_backlog(client: httpx.AsyncClient, load: Load, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            load.backlog.append((await client.get("/readyz")).json().get("backlog", -1))
        except (httpx.HTTPError, ValueError):
            load.backlog.append(-1)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
