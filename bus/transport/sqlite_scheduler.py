"""The in-memory queue of one flow: ready messages plus a timer heap for scheduled ones.

SQLite is the truth; this is only the order of work. A message sits here at most once and is
taken out while a handler has it, so two handlers never hold the same message.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable

from bus.envelope import Envelope


class FlowQueue:
    """Ready deque + heap of (available_at, seq, envelope); ``get`` waits without spinning."""

    def __init__(self, clock: Callable[[], float], poll_interval: float):
        self._clock = clock
        self._poll = poll_interval
        self._ready: deque[Envelope] = deque()
        self._timers: list[tuple[float, int, Envelope]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ready) + len(self._timers)

    def put(self, envelope: Envelope, available_at: float) -> None:
        if available_at <= self._clock():
            self._ready.append(envelope)
        else:
            heapq.heappush(self._timers, (available_at, next(self._seq), envelope))
        self._wake.set()

    async def get(self) -> Envelope:
        """The next message that is due, waiting for one if none is."""
        while True:
            self._wake.clear()
            now = self._clock()
            while self._timers and self._timers[0][0] <= now:
                self._ready.append(heapq.heappop(self._timers)[2])
            if self._ready:
                return self._ready.popleft()
            # Sleep until the next timer, but at most poll_interval: the clock is injectable
            # and may jump, so we look again now and then instead of trusting one long sleep.
            timeout = min(self._timers[0][0] - now, self._poll) if self._timers else None
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
