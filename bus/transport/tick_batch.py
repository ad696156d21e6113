"""The coalescing loop the Redis and RabbitMQ batchers share.

Callers queue items (their last element is the caller's future) and return at once; one task
sends what is queued, ``max_batch`` at a time, and everything queued while a batch is on its
way goes into the next one: N concurrent callers cost one round trip, not N.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any


class TickBatcher(ABC):
    """Subclasses implement ``_send(batch)``, which settles each item's future."""

    def __init__(self, max_batch: int):
        self._max = max_batch
        self._queue: list[tuple[Any, ...]] = []
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _future(self) -> asyncio.Future[Any]:
        """A caller's future, on the loop this batcher serves (bound at its first use):
        ``asyncio.get_running_loop`` makes a getpid system call each time on Python 3.11, and
        the batchers are called a few times per message (bench/RESULTS.md, session 15)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        self._queue.append(item)
        if self._drain is None:
            loop = self._loop or asyncio.get_running_loop()
            self._drain = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # one more tick: the callers woken with this one join in
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                await self._send(batch)
        finally:
            self._drain = None
            for *_, fut in self._queue:  # only when cancelled mid-way (loop shutting down)
                fut.cancel()
            self._queue = []

    @abstractmethod
    async def _send(self, batch: list[Any]) -> None:
        """Send ``batch`` and settle each item's future (its last element)."""


def fail_all(items: list[Any], exc: BaseException) -> None:
    """Fail every item's future not settled yet (its last element) with ``exc``."""
    for *_, fut in items:
        if not fut.done():
            fut.set_exception(exc)


def cancelled_mid_send(items: list[Any], closed: BaseException) -> bool:
    """For a ``_send`` interrupted by CancelledError. True when the drain task itself is being
    cancelled (the loop is shutting down): the callers' futures are cancelled and the caller
    re-raises. Otherwise a future of the channel's was cancelled by its closing, which is not a
    cancellation of the callers: they fail with ``closed``."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        for *_, fut in items:
            fut.cancel()
        return True
    fail_all(items, closed)
    return False
