"""The in-memory queue of one flow: ready messages plus a timer heap for scheduled ones.

SQLite is the truth; this is only the order of work. A message sits here at most once and is
taken out while a handler has it, so two handlers never hold the same message.

Only the first ``window`` messages, and at most ``window_bytes`` of their JSON, are held
whole; past that a message is held by its id alone and read back from the file, a batch at a
time, when its turn comes. So a backlog is bounded by ``backlog_limit``, not by memory: a queued
message held whole cost ~2.4 KB of RSS, held by id ~160 bytes (bench/backlog_memory.py, 200,000
queued: +478 MiB against +31 MiB). The byte budget is for large messages: a parsed 66 KB JSON
body takes ~280 KB of RSS, so 4,096 of them held whole took 1.1 GiB (bench/ingress.py
--body-bytes 65536, the consumer off).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import orjson
import structlog

from bus.envelope import Envelope

log = structlog.get_logger("tieline.transport")

WINDOW = 4096  # envelopes held whole per flow; the rest by id (a few seconds of traffic)
# Bytes of JSON held whole per flow, ~4x that in RSS. Small messages reach WINDOW first (4,096
# of the bench's orders, 418 bytes stored, are 1.6 MiB); 66 KB ones stop at ~120 held whole.
WINDOW_BYTES = 8 * 1024 * 1024
LOAD_BATCH = 128  # ids read back from the file in one query


def body_size(envelope: Envelope) -> int:
    """About what holding ``envelope`` whole costs, for a caller that does not know its stored
    size: its body as JSON (orjson: 0.2 µs for a 218-byte body, 18 µs for 66 KB)."""
    try:
        return len(orjson.dumps(envelope.body))
    except TypeError:  # not JSON (a test's object): count it as small
        return 0

# Reads the queued envelopes of these ids from the file, each with its stored JSON's size
# (those no longer queued are left out).
Load = Callable[[Sequence[str]], Awaitable[dict[str, tuple[Envelope, int]]]]


class FlowQueue:
    """Ready deque + heap of (available_at, seq, item), an item being an envelope or, past
    ``window``, a message id; ``get`` waits without spinning and returns envelopes only."""

    def __init__(self, clock: Callable[[], float], poll_interval: float,
                 load: Load | None = None, window: int | None = None,
                 lost: Callable[[str], None] | None = None, window_bytes: int | None = None):
        self._clock = clock
        self._poll = poll_interval
        self._load = load
        # Without a loader every message is held whole (an id could not be read back).
        self._window = (WINDOW if window is None else window) if load is not None else float("inf")
        self._window_bytes = (
            (WINDOW_BYTES if window_bytes is None else window_bytes) if load is not None
            else float("inf"))
        self._lost = lost or (lambda message_id: None)
        self._held = 0  # envelopes held whole
        self._held_bytes = 0  # their sizes (stored JSON, or body_size), summed
        self._sizes: dict[str, int] = {}  # the size of each envelope held whole, by id
        self._ready: deque[Envelope | str] = deque()
        self._timers: list[tuple[float, int, Envelope | str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ready) + len(self._timers)

    def put(self, envelope: Envelope, available_at: float, size: int | None = None) -> None:
        """Queue a committed message: held whole while the window has room in count and in
        bytes (one always fits into an empty window), else by its id alone. ``size``: bytes
        of its stored JSON if the caller knows them (else measured here)."""
        if self._held < self._window:  # measured only when the count leaves room
            size = self._size(envelope) if size is None else size
            if not self._held or self._held_bytes + size <= self._window_bytes:
                self._count_held(envelope, size)
                self._add(envelope, available_at)
                return
        self._add(envelope.id, available_at)

    def _size(self, envelope: Envelope) -> int:
        return body_size(envelope) if self._load is not None else 0  # no loader: no budget

    def _count_held(self, envelope: Envelope, size: int) -> None:
        self._held += 1
        self._held_bytes += size
        self._sizes[envelope.id] = size

    def _release(self, envelope: Envelope) -> Envelope:
        self._held -= 1
        self._held_bytes -= self._sizes.pop(envelope.id, 0)
        return envelope

    def put_id(self, message_id: str, available_at: float) -> None:
        """Queue a committed message by its id (read back when its turn comes)."""
        self._add(message_id, available_at)

    def _add(self, item: Envelope | str, available_at: float) -> None:
        if available_at <= self._clock():
            self._ready.append(item)
        else:
            heapq.heappush(self._timers, (available_at, next(self._seq), item))
        self._wake.set()

    async def get(self) -> Envelope:
        """The next message that is due, waiting for one if none is."""
        while True:
            self._wake.clear()
            now = self._clock()
            while self._timers and self._timers[0][0] <= now:
                self._ready.append(heapq.heappop(self._timers)[2])
            if self._ready:
                if isinstance(self._ready[0], str):
                    await self._read_back()
                    continue
                return self._release(self._ready.popleft())  # type: ignore[arg-type]
            # Sleep until the next timer, but at most poll_interval: the clock is injectable
            # and may jump, so we look again now and then instead of trusting one long sleep.
            timeout = min(self._timers[0][0] - now, self._poll) if self._timers else None
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _read_back(self) -> None:
        """Replace the ids at the front of the ready queue by their envelopes, in order."""
        ids: list[str] = []
        while self._ready and isinstance(self._ready[0], str) and len(ids) < LOAD_BATCH:
            ids.append(self._ready.popleft())  # type: ignore[arg-type]
        assert self._load is not None  # ids are only queued when there is a loader
        try:
            found = await self._load(ids)
        except Exception as exc:  # the file is unreadable for now: keep the ids, try again
            self._ready.extendleft(reversed(ids))
            log.warning("queue_read_back_failed", count=len(ids), error=str(exc))
            await asyncio.sleep(self._poll)
            return
        envelopes = []
        for message_id in ids:
            loaded = found.get(message_id)
            if loaded is None:  # no longer queued in the file: nothing to run
                self._lost(message_id)
            else:  # held whole now, whatever the budget: one batch at most
                self._count_held(*loaded)
                envelopes.append(loaded[0])
        self._ready.extendleft(reversed(envelopes))
