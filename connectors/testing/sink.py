"""A fake HTTP receiver for tests: records every request, answers as scripted.

    state = SinkState()
    async with serve_app(make_sink_app(state)) as url:
        state.fail_next(2, status=503, retry_after=1)   # then answers 200
        ...
    assert len(state.delivered) == 1 and state.duplicates == 0

Idempotency: a request whose ``Idempotency-Key`` (or ``webhook-id``) was already answered
with 2xx gets that first answer again, counts in ``duplicates`` and is not delivered twice.
Failed answers are not remembered, so a retry with the same key is processed anew.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SinkRequest", "SinkState", "make_sink_app"]

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class SinkRequest:
    """One request as the sink received it; ``headers`` keys are lower-case."""

    method: str
    path: str  # decoded
    query: dict[str, str]  # the last value of a repeated key
    target: str  # path and query exactly as sent on the wire, e.g. /t/a%2Fb?x=1&x=2
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, or None when it is not JSON
    time: float


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def response(self) -> Response:
        return Response(self.body, self.status, headers=self.headers, media_type=self.media_type)


class SinkState:
    """What the sink saw (``requests``, ``delivered``, ``duplicates``) and how it answers."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: for a sink shared by several tests."""
        self.requests: list[SinkRequest] = []  # every request, answered or not
        self.delivered: list[SinkRequest] = []  # answered 2xx, repeats excluded
        self.duplicates = 0
        self.down = False  # True: answer every request 503
        self.delay = 0.0  # seconds to wait before answering (returns early if the client leaves)
        self._script: deque[tuple[str | None, _Answer]] = deque()  # (path or None, answer)
        self._default: _Answer | None = None
        self._by_key: dict[str, _Answer] = {}

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = None,
        *,
        json: Any = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (to ``path`` only, if given) with ``status``, then as before."""
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        body = orjson.dumps(json if json is not None else {"error": f"scripted failure {status}"})
        self._script.extend((path, _Answer(status, body, headers)) for _ in range(n))

    def respond(self, status: int = 200, json: Any = None, *, text: str | None = None,
                headers: dict[str, str] | None = None) -> None:
        """Answer from now on with ``status`` and ``json`` (or plain ``text``)."""
        if text is not None:
            self._default = _Answer(status, text.encode(), dict(headers or {}), "text/plain")
        else:
            self._default = _Answer(status, orjson.dumps(json), dict(headers or {}))

    async def wait_delivered(self, count: int, timeout: float = 5.0) -> list[SinkRequest]:
        """Wait until ``count`` requests were delivered; TimeoutError says how many came."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink: {len(self.delivered)} of {count} requests delivered in {timeout} s")
            await asyncio.sleep(0.01)
        return self.delivered

    def wait_delivered_sync(self, count: int, timeout: float = 5.0) -> list[SinkRequest]:
        """:meth:`wait_delivered` for code without an event loop (sink in another thread)."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink: {len(self.delivered)} of {count} requests delivered in {timeout} s")
            time.sleep(0.01)
        return self.delivered

    def answer(self, rec: SinkRequest) -> _Answer:
        """Decide the answer to one recorded request and update the counters."""
        if self.down:
            return _Answer(503, b'{"error": "sink is down"}', {})
        key = rec.headers.get("idempotency-key") or rec.headers.get("webhook-id")
        if key and key in self._by_key:
            self.duplicates += 1
            return self._by_key[key]
        for i, (path, scripted) in enumerate(self._script):
            if path is None or path == rec.path:
                del self._script[i]
                return scripted
        answer = self._default or _Answer(200, orjson.dumps({"ok": True, "n": len(self.delivered) + 1}))
        if 200 <= answer.status < 300:
            self.delivered.append(rec)
            if key:
                self._by_key[key] = answer
        return answer


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _target(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return (raw + b"?" + query if query else raw).decode("latin-1")


async def _wait(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, returning early when the client hangs up (so shutdown is quick)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.02)


def make_sink_app(state: SinkState) -> Starlette:
    """A Starlette app answering every method on every path from ``state``."""

    async def handle(request: Request) -> Response:
        body = await request.body()
        rec = SinkRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            target=_target(request),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=_parse(body),
            time=time.time(),
        )
        state.requests.append(rec)
        if state.delay:
            await _wait(request, state.delay)
            if await request.is_disconnected():  # the client gave up: nothing was delivered
                return Response(status_code=499)
        return state.answer(rec).response()

    return Starlette(routes=[Route("/{path:path}", handle, methods=_METHODS)])
