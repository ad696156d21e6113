"""The vendor sandbox: with ``settings.sandbox: true`` the bus serves fake vendors itself.

Each fake (from ``connectors/testing/fakes``) is mounted at ``/sandbox/<vendor>/`` with its
sandbox credentials, so the shipped flows run with no vendor accounts; the shipped connector
settings point there through ``${VAR:-...}`` defaults. ``GET /sandbox`` shows what each fake
holds now (tickets, issues, SMS, trackings, platform notifications) — never credentials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp


@dataclass
class Fake:
    name: str
    app: ASGIApp
    show: Callable[[], dict[str, Any]]  # what an operator wants to see, JSON-able


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.repr}
    return value


def _fakes() -> list[Fake]:
    from connectors.testing.fakes import (
        aftership,
        kannel,
        redmine,
        request_tracker,
        twilio,
        zendesk,
    )
    from connectors.testing.sink import SinkState, make_sink_app

    zd = zendesk.ZendeskState()
    rm = redmine.RedmineState()
    rt = request_tracker.RTState(queues=("General", "Housing", "Transport", "Health"))
    kn = kannel.KannelState()
    ash = aftership.AfterShipState()
    tw_app = twilio.make_twilio_app()
    tw = tw_app.state.twilio
    sinks = {name: SinkState() for name in ("platform", "risk")}

    def sink_view(state: SinkState) -> dict[str, Any]:
        return {"received": [{"method": r.method, "path": r.path, "json": r.json} for r in state.delivered]}

    fakes = [
        Fake("zendesk", zendesk.make_zendesk_app(zd), lambda: {"tickets": zd.tickets, "comments": zd.comments}),
        Fake("redmine", redmine.make_redmine_app(rm), lambda: {"issues": rm.issues}),
        Fake("rt", request_tracker.make_rt_app(rt), lambda: {"tickets": rt.tickets}),
        Fake("kannel", kannel.make_kannel_app(kn), lambda: {"sent": [_plain(s) for s in kn.sent]}),
        Fake("aftership", aftership.make_aftership_app(ash), lambda: {"trackings": ash.trackings}),
        Fake("twilio", tw_app, lambda: {"messages": tw.messages, "calls": tw.calls}),
    ]
    for name, state in sinks.items():
        fakes.append(Fake(name, make_sink_app(state), lambda s=state: sink_view(s)))
    return fakes


def routes() -> list[BaseRoute]:
    """Mounts for every fake plus ``GET /sandbox`` listing their contents."""
    fakes = _fakes()

    async def overview(request: Request) -> Response:
        body = {f.name: {"url": f"/sandbox/{f.name}/", **f.show()} for f in fakes}
        return Response(orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS),
                        media_type="application/json")

    return [Route("/sandbox", overview, methods=["GET"])] + [
        Mount(f"/sandbox/{f.name}", app=f.app) for f in fakes
    ]
