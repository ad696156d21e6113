"""The RabbitMQ transport's backlog bound: publishes past it are refused (503 + Retry-After).

The broker's count (passive declares of the queues) is trusted for BACKLOG_CACHE seconds, plus
what this process published since. When it is stale, the first publisher to notice counts again
and the others wait for that same count, instead of each sending its own declares.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bus.errors import BackpressureError

BACKLOG_CACHE = 1.0  # seconds a broker queue count is trusted for the backpressure check


class Backlog:
    def __init__(self, limit: int, count: Callable[[], Awaitable[int]], prefix: str):
        self._limit = limit
        self._count = count
        self._prefix = prefix
        self._counted: tuple[float, int] = (float("-inf"), 0)  # (when, broker backlog)
        self._counting: asyncio.Future[int] | None = None
        self.published = 0  # this process's publishes since the count was taken

    async def check(self, adding: int) -> None:
        """Raise BackpressureError if ``adding`` more messages would pass the bound."""
        at, count = self._counted
        if time.monotonic() - at > BACKLOG_CACHE:
            if self._counting is None:
                self._counting = asyncio.ensure_future(self._recount())
                self._counting.add_done_callback(lambda t: t.cancelled() or t.exception())
            count = await asyncio.shield(self._counting)
        backlog = count + self.published
        if backlog + adding > self._limit:
            raise BackpressureError(
                f"rabbitmq transport {self._prefix}: backlog is {backlog} messages, the bound "
                f"is {self._limit}; retry later, or raise the transport's backlog_limit",
                retry_after=1.0,
            )

    async def _recount(self) -> int:
        try:
            count = await self._count()
            self._counted, self.published = (time.monotonic(), count), 0
            return count
        finally:
            self._counting = None
