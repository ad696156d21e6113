"""Dead letters (list, show, replay one / by filter / by time range, purge) and the audit log.

Replays and purges are audited: who, what, when, how many.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.routing import Route

from bus.http import scopes
from bus.http.api import BadRequest, handles_bad_requests, json_body, limit_of, number
from bus.http.responses import JSON, error

if TYPE_CHECKING:
    from bus.runtime import Runtime


def routes(runtime: Runtime) -> list[Route]:
    transport = runtime.transport

    def route(path: str, endpoint, scope: str, method: str = "GET") -> Route:  # noqa: ANN001
        return Route(path, scopes.scoped(runtime, scope)(handles_bad_requests(endpoint)), methods=[method])

    async def selected(body: dict) -> list[str]:
        """Dead-letter ids chosen by ``ids``, or by ``flow`` and/or a ``since``/``until`` range."""
        ids = body.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise BadRequest("invalid_body", "'ids' must be a list of message ids")
            return ids
        flow, since, until = body.get("flow"), number(body.get("since"), "since"), number(body.get("until"), "until")
        if not (flow or since or until or body.get("all")):
            raise BadRequest("needs_selection", "give 'ids', 'flow', 'since'/'until', or 'all': true")
        if flow is not None and flow not in runtime.flows:
            raise BadRequest("unknown_flow", f"no flow named {flow!r}")
        dls = await transport.dead_letters(flow=flow, limit=1_000_000)
        return [d.message_id for d in dls
                if (since is None or d.dead_at >= since) and (until is None or d.dead_at <= until)]

    async def dlq_list(request: Request) -> JSON:
        dls = await transport.dead_letters(flow=request.query_params.get("flow"), limit=limit_of(request))
        return JSON({"dead_letters": [d.to_dict() for d in dls]})

    async def dlq_show(request: Request) -> JSON:
        dl = await transport.dead_letter(request.path_params["id"])
        if dl is None:
            return error(404, "unknown_dead_letter", f"no dead letter {request.path_params['id']!r}")
        return JSON(dl.to_dict())

    async def dlq_replay_one(request: Request) -> JSON:
        mid = request.path_params["id"]
        if not await runtime.replay(mid):
            return error(404, "unknown_dead_letter", f"no dead letter {mid!r}")
        await runtime.audit.record(scopes.actor(request), "replay", ids=[mid], count=1)
        return JSON({"replayed": [mid]})

    async def dlq_replay_many(request: Request) -> JSON:
        body = await json_body(request)
        done = [mid for mid in await selected(body) if await runtime.replay(mid)]
        await runtime.audit.record(scopes.actor(request), "replay", ids=done, count=len(done),
                                   selection={k: body[k] for k in ("flow", "since", "until", "all") if k in body})
        return JSON({"replayed": done})

    async def dlq_purge(request: Request) -> JSON:
        body = await json_body(request)
        ids = await selected(body)
        count = await transport.purge(ids)
        await runtime.audit.record(scopes.actor(request), "purge", ids=ids, count=count,
                                   selection={k: body[k] for k in ("flow", "since", "until", "all") if k in body})
        return JSON({"purged": count})

    async def audit(request: Request) -> JSON:
        entries = await runtime.audit.read(limit_of(request), request.query_params.get("action"))
        return JSON({"audit": entries})

    return [
        route("/api/v1/dlq", dlq_list, scopes.DLQ_READ),
        route("/api/v1/dlq/replay", dlq_replay_many, scopes.DLQ_REPLAY, "POST"),
        route("/api/v1/dlq/purge", dlq_purge, scopes.DLQ_PURGE, "POST"),
        route("/api/v1/dlq/{id}", dlq_show, scopes.DLQ_READ),
        route("/api/v1/dlq/{id}/replay", dlq_replay_one, scopes.DLQ_REPLAY, "POST"),
        route("/api/v1/audit", audit, scopes.DLQ_READ),
    ]
