"""Token-bucket rate limiting per (client or IP, route), in memory.

In memory means per process: with several workers (the rabbitmq engine) each one keeps its own
buckets, so the effective limit is ``workers × rate``; a cluster-wide limit needs Redis.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bus.http.responses import error

Endpoint = Callable[[Request], Awaitable[Response]]


class TokenBucket:
    """``burst`` tokens per key, refilled at ``rate`` per second; idle keys are forgotten."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit: rate must be > 0 and burst ≥ 1, got {rate=}, {burst=}")
        self.rate, self.burst, self._max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def take(self, key: Hashable) -> float:
        """Spend one token for ``key``: 0.0 if allowed, else seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self._max_keys:  # least recently used: refilled the longest
            self._buckets.popitem(last=False)
        return wait


def client_key(request: Request) -> str:
    """The authenticated client (set by the guard) or else the peer IP."""
    principal: Any = request.scope.get("state", {}).get("principal")
    if principal is not None:
        return "client:" + principal.client_id
    return "ip:" + (request.client.host if request.client else "-")


def limit(bucket: TokenBucket, *, key: Callable[[Request], str] = client_key
          ) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint: 429 + Retry-After once its (client, route) bucket is empty.

    Put it inside ``guard.require`` so the client is known: ``require(...)(limit(b)(fn))``.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            route = request.scope.get("route")
            name = getattr(route, "path", None) or endpoint.__qualname__
            wait = bucket.take((key(request), name))
            if wait > 0:
                retry = max(1, math.ceil(wait))
                return error(429, "rate_limited", f"too many requests; retry in {retry}s",
                             {"retry_after": retry}, **{"Retry-After": str(retry)})
            return await endpoint(request)

        return wrapper

    return decorate
