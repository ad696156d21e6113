"""Token bucket per (client or IP, route) and its 429 answer."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bus.http.responses import JSON
from bus.security.clients import ClientRegistry
from bus.security.guard import Guard
from bus.security.ratelimit import TokenBucket, limit
from bus.security.tokens import TokenService, load_keys
from connectors.testing.server import run_in_thread

from .conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    """`burst` requests pass at once, the next waits 1/rate, and time refills the bucket."""
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("k") == 0.5
    clock.now += 0.5
    assert bucket.take("k") == 0.0


def test_keys_are_independent() -> None:
    """One key's empty bucket does not limit another key."""
    bucket = TokenBucket(rate=1.0, burst=1, clock=Clock())
    assert bucket.take(("a", "/x")) == 0.0
    assert bucket.take(("a", "/x")) > 0
    assert bucket.take(("b", "/x")) == 0.0
    assert bucket.take(("a", "/y")) == 0.0


def test_memory_is_bounded() -> None:
    """Past max_keys the least recently used bucket is forgotten (it starts full again)."""
    bucket = TokenBucket(rate=1.0, burst=1, max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        bucket.take(key)
    assert bucket.take("a") == 0.0  # forgotten, so full
    assert bucket.take("c") > 0  # still remembered


def test_limit_answers_429_per_client_and_route() -> None:
    """Over the limit a route answers 429 + Retry-After; other clients and routes are unaffected."""
    settings = make_settings()
    tokens = TokenService(settings, load_keys(settings.signing))
    guard = Guard(tokens, ClientRegistry(settings.clients))
    bucket = TokenBucket(rate=0.01, burst=1)

    @guard.require("flows:read")
    @limit(bucket)
    async def one(request: Request) -> JSON:
        return JSON({"ok": 1})

    @guard.require("flows:read")
    @limit(bucket)
    async def two(request: Request) -> JSON:
        return JSON({"ok": 2})

    app = Starlette(routes=[Route("/one", one), Route("/two", two)])
    auth = {c: {"authorization": "Bearer " + tokens.issue(c, ["flows:read"]).access_token}
            for c in ("sp", "ops")}
    with run_in_thread(app) as url, httpx.Client(base_url=url) as http:
        first, second = http.get("/one", headers=auth["sp"]), http.get("/one", headers=auth["sp"])
        other_client, other_route = http.get("/one", headers=auth["ops"]), http.get("/two", headers=auth["sp"])
    assert (first.status_code, second.status_code) == (200, 429)
    assert int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["code"] == "rate_limited"
    assert (other_client.status_code, other_route.status_code) == (200, 200)
