"""A lean open-loop load generator for signed webhooks: raw HTTP/1.1 on keep-alive connections.

The generator shares the machine's two cores with the bus under test, so what it burns is taken
from the bus. aiohttp's client cost ~330 µs of CPU per request here (a third of a core at
1,000/s); this one writes each request as one prebuilt byte string and reads the answer with a
small parser (status line, Content-Length, Retry-After), ~10x less (bench/RESULTS.md).

Open loop, as ``e2e.generate``: sends are scheduled at ``rate``; a send finds an idle
connection or waits in line for one (at most ``inflight`` waiting or open, else it is counted
as skipped); each body carries its *scheduled* send time, and the 202 latency is measured from
it too, so a late generator counts against the bus, never for it.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import common as c
import httpx
from loadstats import Load, sample_backlog


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, on_answer: Callable[[_Connection, int, bool], None],
                 on_lost: Callable[[_Connection], None]):
        self._on_answer, self._on_lost = on_answer, on_lost
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = -1  # bytes of the whole answer once its head is read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> None:
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                                  else None]) if at >= 0 else 0
                self._status = int(head[9:12])
                self._retry_after = b"\r\nretry-after:" in head
                self._need = end + 4 + length
            if len(buf) < self._need:
                return
            del buf[:self._need]
            self._need = -1
            self._on_answer(self, self._status, self._retry_after)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self)


async def generate(url: str, rate: float, duration: float, *, inflight: int = 512,
                   connections: int = 64, on_tick=None,  # noqa: ANN001 - optional per-second callback
                   size: int = 0) -> Load:
    """Send signed webhooks to ``url`` at ``rate``/s for ``duration`` s (open loop, bounded);
    ``size``: pad each order to that many bytes (``common.order``)."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    signer, tag, load = c.Signer(), uuid.uuid4().hex[:8], Load(rate, duration)
    idle: list[_Connection] = []
    waiting: collections.deque[tuple[bytes, float]] = collections.deque()
    started: dict[_Connection, float] = {}  # connection -> when its request was due
    opened = 0
    done = asyncio.Event()

    def request(i: int, due_wall: float) -> bytes:
        mid = f"e2e_{tag}_{i}"
        body = c.order(mid, due_wall, size)
        head = "".join(f"{k}: {v}\r\n" for k, v in signer.headers(mid, body).items())
        return (f"POST {c.HOOK} HTTP/1.1\r\nhost: {host}:{port}\r\n{head}"
                f"content-length: {len(body)}\r\n\r\n").encode() + body

    def answered(conn: _Connection, status: int, retry_after: bool) -> None:
        due = started.pop(conn)
        load.statuses[status] += 1
        if status == 503 and retry_after:
            load.retry_after += 1
        if status == 202:
            load.ack_ms.append((time.perf_counter() - due) * 1000)
        dispatch(conn)

    def lost(conn: _Connection) -> None:
        nonlocal opened
        opened -= 1
        if conn in started:
            started.pop(conn)
            load.statuses["ConnectionLost"] += 1
        if conn in idle:
            idle.remove(conn)
        if waiting and opened < connections:  # the line must not wait on a closed connection
            asyncio.ensure_future(open_one())
        check_done()

    def dispatch(conn: _Connection) -> None:
        if waiting:
            req, due = waiting.popleft()
            started[conn] = due
            conn.send(req)
        else:
            idle.append(conn)
            check_done()

    def check_done() -> None:
        if finished and not waiting and not started:
            done.set()

    async def open_one() -> None:
        nonlocal opened
        opened += 1
        try:
            _, conn = await loop.create_connection(lambda: _Connection(answered, lost), host, port)
        except OSError as exc:
            opened -= 1
            load.statuses[type(exc).__name__] += 1
            return
        dispatch(conn)

    finished = False
    async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_backlog(probe, load, stop))
        t0 = time.perf_counter()
        i, next_tick, last = 0, 1.0, 0.0
        while (elapsed := time.perf_counter() - t0) < duration:
            load.paused_ms = max(load.paused_ms, (elapsed - last) * 1000)
            last = elapsed
            due = int(elapsed * rate)
            while i < due:
                if len(waiting) + len(started) >= inflight:
                    load.skipped += 1
                else:
                    due_at = t0 + i / rate
                    # The scheduled time on the wall clock, taken now: this VM's wall clock is
                    # slewed and stepped against the monotonic one (seconds in an hour), so
                    # ``wall0 + i / rate`` drifted away from the sink's clock during a run.
                    waiting.append((request(i, time.time() - (time.perf_counter() - due_at)),
                                    due_at))
                    load.sent += 1
                    if idle:
                        dispatch(idle.pop())
                    elif opened < connections:
                        asyncio.ensure_future(open_one())
                i += 1
            if on_tick and elapsed >= next_tick:
                on_tick(elapsed)
                next_tick += 1.0
            await asyncio.sleep(0.002)
        finished = True
        check_done()
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            load.statuses["Timeout"] += len(waiting) + len(started)
        for conn in list(idle):
            conn.transport.close()  # type: ignore[union-attr]
        stop.set()
        await sampler
    return load
