"""One webhook request in, one answer out: ``/hooks/{connector}`` without an HTTP framework.

Two fronts call it with what they parsed: the Starlette route (``bus/http/ingress.py``) and
the protocol-level fast path (``bus/http/fast_hooks.py``). Keeping the whole decision here,
and the fronts down to reading bytes and writing them back, is what makes their answers the
same byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import orjson
import structlog
from starlette.datastructures import URL

from bus.errors import BackpressureError, InboundError, TransportError
from bus.http.answer import Answer, refusal
from bus.http.body import BodyTooLarge
from bus.http.limits import check_hook
from connectors.base import InboundRequest

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = structlog.get_logger("tieline.http")

TEMPLATE = "/hooks/{connector}"  # the route's template: its metrics label, its rate-limit key


def refusal_of(exc: Exception) -> Answer:
    """The answer to an exception the ingress raises for the caller to see."""
    if isinstance(exc, BodyTooLarge):
        return refusal(413, "body_too_large", str(exc), {"limit": exc.limit})
    if isinstance(exc, BackpressureError):
        retry = str(max(1, round(exc.retry_after)))
        return refusal(503, "backlog_full", str(exc), None, (("Retry-After", retry),))
    if isinstance(exc, TransportError):
        return refusal(503, "transport_unavailable", str(exc), None, (("Retry-After", "1"),))
    if isinstance(exc, InboundError):
        code = "signature_invalid" if exc.status == 401 else "invalid_payload"
        return refusal(exc.status, code, str(exc))
    raise exc


@dataclass(frozen=True, slots=True)
class HookRequest:
    """What a front parsed of one hook request. ``body`` is the BodyTooLarge that reading it
    raised, when it was over the limit: the refusals before it (unknown hook, caller not
    allowed) still come first."""

    connector: str
    method: str
    url: str
    path: str
    headers: dict[str, str]  # lower-case names
    query: dict[str, str]
    body: bytes | BodyTooLarge
    client_ip: str


class HookDesk:
    """Verifies, parses and admits webhook events for ``runtime``'s connectors."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def take(self, req: HookRequest) -> Answer:
        runtime = self.runtime
        name = req.connector
        connector = runtime.connectors.get(name)
        if connector is None:
            return refusal(404, "unknown_connector", f"no connector named {name!r}")
        cc = runtime.config.connectors.get(name)
        refused = check_hook(cc.ingress if cc else None, req.client_ip, req.headers)
        if refused is not None:
            status, message = refused
            return refusal(status, "hook_forbidden" if status == 403 else "api_key_invalid", message)
        try:
            if isinstance(req.body, BodyTooLarge):
                raise req.body
            inbound = InboundRequest(method=req.method, url=req.url, path=req.path,
                                     headers=req.headers, query=req.query, body=req.body,
                                     client_ip=req.client_ip)
            connector.verify(inbound)
            events = connector.parse(inbound)
            for event in events:
                runtime.ingress.check_event(connector, event)
            results = []
            for event in events:  # a loop, not an async comprehension: one coroutine less
                results.append(await runtime.ingress.admit(name, event, inbound.headers))
        except (BodyTooLarge, InboundError, TransportError) as exc:
            log.info("hook_refused", connector=name, error=str(exc))
            return refusal_of(exc)
        accepted = [mid for r in results for mid in r.accepted]
        # 200 when nothing new was taken: every event a duplicate, or the request held none.
        all_duplicates = all(r.duplicate_of is not None for r in results)
        body = orjson.dumps({"accepted": accepted, "events": [r.to_dict() for r in results]})
        return Answer(200 if all_duplicates else 202, body)


@lru_cache(maxsize=256)
def url_of(scheme: str, server: tuple[str, int] | None, host: bytes | None, path: str,
           query: bytes, public_url: str) -> tuple[str, str]:
    """The URL the caller used (or the same path and query under ``public_url``) as Starlette
    builds it from these scope parts, and its path. Cached: a hook is called on the same URL
    again and again, and building one (host parsing, urlunsplit, urlsplit) costs ~10 µs."""
    scope = {"type": "http", "scheme": scheme, "server": server, "path": path,
             "query_string": query, "headers": [(b"host", host)] if host is not None else []}
    url = URL(scope=scope)
    if public_url:
        return public_url.rstrip("/") + url.path + (f"?{url.query}" if url.query else ""), url.path
    return str(url), url.path


def query_of(raw: bytes) -> dict[str, str]:
    """Query parameters, parsed only when there are any (most webhooks have none)."""
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
