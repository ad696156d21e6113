"""Routes that take messages in: ``POST /hooks/{connector}`` and ``POST /flows/{flow}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from bus.errors import InboundError, TransportError
from bus.http import scopes
from bus.http.body import BodyTooLarge, read_limited
from bus.http.hooks import TEMPLATE, HookDesk, HookRequest, query_of, refusal_of, url_of
from bus.http.responses import JSON, answer_response, error

if TYPE_CHECKING:
    from bus.runtime import Runtime


def routes(runtime: Runtime) -> list[Route]:
    max_body = runtime.config.settings.http.max_body_bytes
    public_url = runtime.config.settings.http.public_url
    desk = HookDesk(runtime)

    async def hook(request: Request) -> Response:
        try:
            body: bytes | BodyTooLarge = await read_limited(request, max_body)
        except BodyTooLarge as exc:
            body = exc
        url, path = _url(request.scope, public_url)
        client = request.scope.get("client")
        answer = await desk.take(HookRequest(
            request.path_params["connector"], request.method, url, path, _headers(request),
            query_of(request.scope.get("query_string", b"")), body, client[0] if client else ""))
        return answer_response(answer)

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
            return answer_response(refusal_of(exc))
        return JSON({"accepted": [mid]}, status_code=202)

    return [
        Route(TEMPLATE, hook, methods=["POST", "GET"]),  # GET: Kannel-style callbacks
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
    return url_of(scope.get("scheme", "http"), tuple(server) if server else None, host,
                  scope["path"], scope.get("query_string", b""), public_url or "")
