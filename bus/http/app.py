"""The Starlette application: ingress, health, management API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bus.http import api, api_dlq, ingress, observability, sync_routes
from bus.http.limits import HeaderLimits, RateLimit, RateLimiter
from bus.http.openapi import document
from bus.http.responses import JSON, error

if TYPE_CHECKING:
    from bus.runtime import Runtime


def build_app(runtime: Runtime) -> Starlette:
    async def healthz(request: Request) -> JSON:
        return JSON({"status": "ok"})

    async def readyz(request: Request) -> JSON:
        if not runtime.ready:
            return error(503, "not_ready", "the bus is starting or stopping")
        body = {"status": "ready", "backlog": await runtime.transport.backlog()}
        if runtime.supervisor is not None:  # `tieline run --workers`: which are running
            body["workers"] = runtime.supervisor.describe()
        return JSON(body)

    async def not_found(request: Request, exc: Exception) -> JSON:
        return error(404, "not_found", f"no route for {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> JSON:
        return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *ingress.routes(runtime),
        *api.routes(runtime),
        *api_dlq.routes(runtime),
        *sync_routes.routes(runtime),  # after /api/v1: operator routes keep priority
        *observability.routes(runtime),
    ]
    if runtime.security is not None:
        routes += runtime.security.routes()
    if runtime.config.settings.sandbox:
        from bus.sandbox import routes as sandbox_routes

        routes += sandbox_routes()
    async def openapi_json(request: Request) -> JSON:
        return JSON(document(routes))

    routes.append(Route("/api/v1/openapi.json", openapi_json, methods=["GET"]))
    def refresh_sync_routes() -> None:
        """After a reload: swap the sync-flow routes in place (added, removed, changed flows)."""
        table = app.router.routes
        first = next((i for i, r in enumerate(table) if getattr(r, "name", "").startswith("sync:")), None)
        kept = [r for r in table if not getattr(r, "name", "").startswith("sync:")]
        at = first if first is not None else len(kept)
        table[:] = kept[:at] + sync_routes.routes(runtime) + kept[at:]

    runtime.on_apply.append(refresh_sync_routes)
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    rate = runtime.config.settings.http.rate_limit
    if rate is not None:
        app.state.rate_limiter = RateLimiter(rate)  # shared with the webhook fast path
        app.add_middleware(RateLimit, limiter=app.state.rate_limiter)
    app.add_middleware(HeaderLimits)
    app.add_middleware(observability.RequestCounter, runtime=runtime)  # outermost: counts 429s too
    return app
