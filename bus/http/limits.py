"""Per-client, per-route request limits (429 + Retry-After), and per-hook IP/API-key checks.

The client is the bearer token when one is sent (hashed; each token is one client's) or else
the peer address; the route is the route template, so ids in paths do not split buckets.
Health and metrics endpoints are not limited: monitoring must keep working under load.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from bus.config.model import IngressRule, Rate
from bus.http.answer import Answer, refusal
from bus.http.observability import _template
from bus.http.responses import answer_response
from bus.security.ratelimit import TokenBucket

UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


class RateLimiter:
    """The token buckets, one per client and route template. The middleware below and the
    webhook fast path (``fast_hooks``) share one, so a client has one budget per route."""

    def __init__(self, rate: Rate):
        self.bucket = TokenBucket(rate.per_second, int(max(1, rate.burst)))

    def refusal(self, client: str, template: str) -> Answer | None:
        """A 429 when ``client`` (see :func:`client_key`) is over its rate on ``template``."""
        wait = self.bucket.take(f"{client} {template}")
        if wait <= 0:
            return None
        retry = str(max(1, math.ceil(wait)))
        return refusal(429, "rate_limited", f"too many requests; retry in {retry} s",
                       headers=(("Retry-After", retry),))


class RateLimit:
    def __init__(self, app: ASGIApp, limiter: RateLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        refused = self.limiter.refusal(client_key(scope.get("headers", ()), client[0] if client else None),
                                       _template(scope))
        if refused is not None:
            await answer_response(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)


MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


def header_refusal(headers: Sequence[tuple[bytes, bytes]]) -> Answer | None:
    """A 431 for requests with too many or too large headers."""
    size = sum(len(k) + len(v) for k, v in headers)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        return refusal(431, "headers_too_large",
                       f"request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes",
                       {"fields": len(headers), "bytes": size})
    return None


class HeaderLimits:
    """431 for requests with too many or too large headers (before anything reads them)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = header_refusal(scope.get("headers", ()))
            if refused is not None:
                await answer_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_key(headers: Iterable[tuple[bytes, bytes]], peer_ip: str | None) -> str:
    """Who a request is for rate limits: its bearer token (hashed) or else its peer address."""
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return "token:" + hashlib.sha256(value[7:]).hexdigest()[:16]
    return f"ip:{peer_ip}" if peer_ip else "ip:?"


def check_hook(rule: IngressRule | None, client_ip: str, headers: dict[str, str]) -> tuple[int, str] | None:
    """None when the request may go on to signature checks, else (status, message)."""
    if rule is None:
        return None
    if rule.allow_ips:
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return 403, f"caller address {client_ip!r} is not allowed on this hook"
        if not any(ip in ipaddress.ip_network(n, strict=False) for n in rule.allow_ips):
            return 403, f"caller address {client_ip} is not allowed on this hook"
    if rule.api_key:
        given = headers.get(rule.api_key_header, "")
        if not hmac.compare_digest(given.encode(), rule.api_key.encode()):
            return 401, f"missing or wrong API key in header {rule.api_key_header}"
    return None
