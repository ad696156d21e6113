"""Routes that take messages in: ``POST /hooks/{connector}`` and ``POST /flows/{flow}``."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import orjson
import structlog
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Scope

from bus.errors import BackpressureError, InboundError, TransportError
from bus.http import scopes
from bus.http.body import BodyTooLarge, read_limited
from bus.http.limits import check_hook
from bus.http.responses import JSON, error
from connectors.base import InboundRequest

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = structlog.get_logger("tieline.http")


def _refusal(exc: Exception) -> JSON:
    if isinstance(exc, BodyTooLarge):
        return error(413, "body_too_large", str(exc), {"limit": exc.limit})
    if isinstance(exc, BackpressureError):
        return error(
            503, "backlog_full", str(exc), None, **{"Retry-After": str(max(1, round(exc.retry_after)))}
        )
    if isinstance(exc, TransportError):
        return error(503, "transport_unavailable", str(exc), None, **{"Retry-After": "1"})
    if isinstance(exc, InboundError):
        code = "signature_invalid" if exc.status == 401 else "invalid_payload"
        return error(exc.status, code, str(exc))
    raise exc


def routes(runtime: Runtime) -> list[Route]:
    max_body = runtime.config.settings.http.max_body_bytes
    public_url = runtime.config.settings.http.public_url

    async def hook(request: Request) -> JSON:
        name = request.path_params["connector"]
        connector = runtime.connectors.get(name)
        if connector is None:
            return error(404, "unknown_connector", f"no connector named {name!r}")
        client = request.scope.get("client")
        client_ip = client[0] if client else ""
        cc = runtime.config.connectors.get(name)
        headers = _headers(request)
        refused = check_hook(cc.ingress if cc else None, client_ip, headers)
        if refused is not None:
            status, message = refused
            return error(status, "hook_forbidden" if status == 403 else "api_key_invalid", message)
        try:
            body = await read_limited(request, max_body)
            url, path = _url(request.scope, public_url)
            inbound = InboundRequest(
                method=request.method,
                url=url,
                path=path,
                headers=headers,
                query=_query(request),
                body=body,
                client_ip=client_ip,
            )
            connector.verify(inbound)
            events = connector.parse(inbound)
            for event in events:
                runtime.ingress.check_event(connector, event)
            results = []
            for event in events:  # a loop, not an async comprehension: one coroutine less
                results.append(await runtime.ingress.admit(name, event, inbound.headers))
        except (BodyTooLarge, InboundError, TransportError) as exc:
            log.info("hook_refused", connector=name, error=str(exc))
            return _refusal(exc)
        accepted = [mid for r in results for mid in r.accepted]
        # 200 when nothing new was taken: every event a duplicate, or the request held none.
        all_duplicates = all(r.duplicate_of is not None for r in results)
        return JSON(
            {"accepted": accepted, "events": [r.to_dict() for r in results]},
            status_code=200 if all_duplicates else 202,
        )

    async def flow_entry(request: Request) -> JSON:
        name = request.path_params["flow"]
        if name not in runtime.flows:
            return error(404, "unknown_flow", f"no flow named {name!r}")
        if not runtime.is_enabled(name):
            return error(409, "flow_disabled", f"flow {name!r} is disabled; enable it with "
                         f"POST /api/v1/flows/{name}/enable")
        try:
            raw = await read_limited(request, max_body)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                return error(400, "invalid_json", f"body is not valid JSON: {e}")
            mid = await runtime.ingress.admit_to_flow(
                name, body, _headers(request)
            )
        except (BodyTooLarge, InboundError, TransportError) as exc:
            return _refusal(exc)
        return JSON({"accepted": [mid]}, status_code=202)

    return [
        Route("/hooks/{connector}", hook, methods=["POST", "GET"]),  # GET: Kannel-style callbacks
        Route("/flows/{flow}", scopes.scoped(runtime, scopes.EVENTS_SEND)(flow_entry), methods=["POST"]),
    ]


def _headers(request: Request) -> dict[str, str]:
    """Lower-case header names (ASGI already gives them lower-case): built straight from the scope."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


def _url(scope: Scope, public_url: str | None) -> tuple[str, str]:
    """The URL the caller used (or the same path and query under ``public_url``), and its path."""
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
            break
    server = scope.get("server")
    return _url_of(scope.get("scheme", "http"), tuple(server) if server else None, host,
                   scope["path"], scope.get("query_string", b""), public_url or "")


@lru_cache(maxsize=256)
def _url_of(scheme: str, server: tuple[str, int] | None, host: bytes | None, path: str,
            query: bytes, public_url: str) -> tuple[str, str]:
    """Starlette's URL of these scope parts. Cached: a hook is called on the same URL again and
    again, and building one (host parsing, urlunsplit, urlsplit) costs ~10 µs a request."""
    scope = {"type": "http", "scheme": scheme, "server": server, "path": path,
             "query_string": query, "headers": [(b"host", host)] if host is not None else []}
    url = URL(scope=scope)
    if public_url:
        return public_url.rstrip("/") + url.path + (f"?{url.query}" if url.query else ""), url.path
    return str(url), url.path


def _query(request: Request) -> dict[str, str]:
    """Query parameters, parsed only when there are any (most webhooks have none)."""
    raw = request.scope.get("query_string", b"")
    if not raw:
        return {}
    from urllib.parse import parse_qsl

    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
