"""Fault injection for vendor fakes: wrap any ASGI app and script its next failures.

    faults = Faults()
    app = with_faults(make_zendesk_app(state), faults)
    faults.fail_next(2, status=503)                 # the next 2 requests get 503
    faults.fail_next(1, status=429, retry_after=7)  # then one 429 with Retry-After: 7
    faults.slow_next(1, seconds=5)                  # then one that answers after 5 s (client timeouts)

Only requests whose path starts with ``prefix`` (default: all) are affected, so one fake can
fail while another served by the same app keeps answering.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Faults", "with_faults"]


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int = 0  # 0: no error answer (only a delay)
    retry_after: float | None = None
    delay: float = 0.0
    body: bytes = b""


@dataclass
class Faults:
    prefix: str = ""
    _queue: deque[_Fault] = field(default_factory=deque)
    down: bool = False  # every request 503 until cleared
    injected: int = 0  # how many requests were failed or slowed

    def fail_next(
        self, n: int = 1, status: int = 503, *, retry_after: float | None = None, body: bytes | None = None
    ) -> None:
        payload = body if body is not None else orjson.dumps({"error": f"injected {status}"})
        self._queue.extend(_Fault(status, retry_after, 0.0, payload) for _ in range(n))

    def slow_next(self, n: int = 1, seconds: float = 5.0) -> None:
        self._queue.extend(_Fault(delay=seconds) for _ in range(n))

    def clear(self) -> None:
        self._queue.clear()
        self.down = False

    def take(self, path: str) -> _Fault | None:
        if not path.startswith(self.prefix):
            return None
        if self.down:
            return _Fault(503, None, 0.0, b'{"error": "service unavailable"}')
        return self._queue.popleft() if self._queue else None


def with_faults(app: ASGIApp, faults: Faults) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        fault = faults.take(scope.get("path", "")) if scope["type"] == "http" else None
        if fault is None:
            await app(scope, receive, send)
            return
        faults.injected += 1
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if not fault.status:
            await app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json")]
        if fault.retry_after is not None:
            headers.append((b"retry-after", f"{fault.retry_after:g}".encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": fault.body})

    return wrapped
