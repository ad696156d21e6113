"""Routes of the sync API flows: one Starlette route per flow with ``from: {http: ...}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bus.http import scopes
from bus.http.body import BodyTooLarge, read_limited
from bus.http.responses import JSON, error
from bus.sync import SyncFailure, SyncFlows

if TYPE_CHECKING:
    from bus.flow import CompiledFlow
    from bus.runtime import Runtime


def sync_flows(runtime: Runtime) -> SyncFlows:
    """The runtime's SyncFlows, or one sharing its runner's call policy (throttle, breakers)."""
    existing = getattr(runtime, "sync", None)
    if isinstance(existing, SyncFlows):
        return existing
    return SyncFlows(runtime.flows, runtime.runner.calls, runtime.transport,
                     topics=runtime.runner.topics, observer=runtime.observers)


def routes(runtime: Runtime) -> list[Route]:
    sync = sync_flows(runtime)
    max_body = runtime.config.settings.http.max_body_bytes

    def endpoint(cf: CompiledFlow):  # noqa: ANN202 - a Starlette endpoint
        async def serve(request: Request) -> Response:
            body = None
            if request.method not in ("GET", "DELETE"):
                try:
                    raw = await read_limited(request, max_body)
                except BodyTooLarge as exc:
                    return error(413, "body_too_large", str(exc), {"limit": exc.limit})
                try:
                    body = orjson.loads(raw) if raw.strip() else None
                except orjson.JSONDecodeError as exc:
                    return error(400, "invalid_json", f"body is not valid JSON: {exc}")
            headers = {k.lower(): v for k, v in request.headers.items()}
            try:
                answer = await sync.answer(cf, request.path_params, dict(request.query_params),
                                           body, headers)
            except SyncFailure as exc:
                return JSON(exc.body(), status_code=exc.status, headers=exc.headers() or None)
            if answer.status == 204:
                return Response(status_code=204, headers=answer.headers or None)
            return JSON(_visible(request, cf.name, answer.body), status_code=answer.status,
                        headers=answer.headers or None)

        # A sync flow needs the per-flow scope flow:<name> when security is configured.
        return scopes.scoped(runtime, scopes.flow_scope(cf.name))(serve)

    out = []
    for cf in sync.served():
        src = cf.flow.source
        out.append(Route(src.path, endpoint(cf), methods=[src.method], name=f"sync:{cf.name}"))
    return out


def _visible(request: Request, flow: str, body: object) -> object:
    """Apply the caller's field allow-list for this flow, on the server, before it leaves."""
    principal = getattr(request.state, "principal", None)
    allowed = principal.allowed_fields(flow) if principal is not None else None
    if allowed is None:
        return body
    from bus.security.fields import project

    return project(body, allowed)
