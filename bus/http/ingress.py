"""Routes that take messages in: ``POST /hooks/{connector}`` and ``POST /flows/{flow}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import structlog
from starlette.requests import Request
from starlette.routing import Route

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
        client_ip = request.client.host if request.client else ""
        cc = runtime.config.connectors.get(name)
        headers = _headers(request)
        refused = check_hook(cc.ingress if cc else None, client_ip, headers)
        if refused is not None:
            status, message = refused
            return error(status, "hook_forbidden" if status == 403 else "api_key_invalid", message)
        try:
            body = await read_limited(request, max_body)
            url = str(request.url)
            if public_url:
                url = public_url.rstrip("/") + request.url.path + (
                    f"?{request.url.query}" if request.url.query else ""
                )
            inbound = InboundRequest(
                method=request.method,
                url=url,
                path=request.url.path,
                headers=headers,
                query=_query(request),
                body=body,
                client_ip=client_ip,
            )
            connector.verify(inbound)
            events = connector.parse(inbound)
            for event in events:
                runtime.ingress.check_event(connector, event)
            results = [await runtime.ingress.admit(name, ev, inbound.headers) for ev in events]
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


def _query(request: Request) -> dict[str, str]:
    """Query parameters, parsed only when there are any (most webhooks have none)."""
    raw = request.scope.get("query_string", b"")
    if not raw:
        return {}
    from urllib.parse import parse_qsl

    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
