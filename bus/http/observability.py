"""``/metrics`` (Prometheus), ``/api/v1/stats`` (dashboard data), ``/dashboard`` (the page)."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import worker_reports
from bus.http import scopes
from bus.http.responses import JSON
from bus.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from bus.runtime import Runtime


def routes(runtime: Runtime) -> list[Route]:
    page = files("bus.http").joinpath("dashboard.html").read_text(encoding="utf-8")

    async def metrics(request: Request) -> Response:
        return Response(await worker_reports.render_metrics(runtime), media_type=CONTENT_TYPE_LATEST)

    async def stats(request: Request) -> JSON:
        snap = await worker_reports.stats_snapshot(runtime)
        dead = {}
        for name in runtime.flows:
            depth, oldest = await runtime.transport.dead_letter_summary(name)
            dead[name] = {"depth": depth, "oldest": oldest}
        snap["dead_letters"] = dead
        snap["backlog"] = {name: await runtime.transport.backlog(name) for name in runtime.flows}
        return JSON(snap)

    async def dashboard(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    read = scopes.scoped(runtime, scopes.FLOWS_READ)
    return [
        Route("/metrics", read(metrics), methods=["GET"]),
        Route("/api/v1/stats", read(stats), methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
    ]


class RequestCounter:
    """Counts HTTP requests by route template (not raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp, runtime: Runtime):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            # The router leaves the matched route in the scope: no second matching pass.
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            m = self.runtime.metrics
            m.child(m.ingress, template, str(watch.code)).inc()


class _StatusWatch:
    """``send``, noting the response status (500 until one is sent). One object per request,
    not a closure and its cells: requests wait on commits, and all they hold is GC work."""

    __slots__ = ("send", "code")

    def __init__(self, send: Send):
        self.send = send
        self.code = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self.send(message)


def _template(scope: Scope) -> str:
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", scope["path"])
    return "unmatched"
