"""The management API (``/api/v1``): flows, the message ledger, dead letters.

Authentication and the full API surface come with the security issue; this is the part the
CLI needs to operate a running bus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from bus.http.responses import JSON, error
from bus.plan import describe_source
from bus.transport.base import MessageRecord, MessageState

if TYPE_CHECKING:
    from bus.runtime import Runtime


def record_dict(rec: MessageRecord) -> dict[str, Any]:
    return {
        "id": rec.envelope.id,
        "flow": rec.envelope.flow,
        "state": rec.state.value,
        "cursor": rec.envelope.cursor,
        "attempt": rec.envelope.attempt,
        "correlation_id": rec.envelope.correlation_id,
        "flow_version": rec.envelope.flow_version,
        "available_at": rec.available_at,
        "updated_at": rec.updated_at,
        "error": rec.error,
    }


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = orjson.loads(raw)
    return data if isinstance(data, dict) else {}


def _limit(request: Request, default: int = 100) -> int:
    try:
        return max(1, min(1000, int(request.query_params.get("limit", default))))
    except ValueError:
        return default


def routes(runtime: Runtime) -> list[Route]:
    transport = runtime.transport

    async def flows(request: Request) -> JSON:
        out = []
        for cf in runtime.flows.values():
            f = cf.flow
            out.append(
                {
                    "name": f.name,
                    "version": f.version,
                    "enabled": f.enabled,
                    "from": describe_source(f),
                    "location": str(f.loc),
                    "backlog": await transport.backlog(f.name),
                }
            )
        return JSON({"flows": out})

    async def messages(request: Request) -> JSON:
        q = request.query_params
        state = q.get("state")
        if state and state not in MessageState.__members__.values():
            return error(400, "invalid_state", f"unknown state {state!r}",
                         {"allowed": [s.value for s in MessageState]})
        recs = await transport.search(
            flow=q.get("flow"),
            state=MessageState(state) if state else None,
            correlation_id=q.get("correlation_id"),
            since=float(q["since"]) if q.get("since") else None,
            until=float(q["until"]) if q.get("until") else None,
            limit=_limit(request),
        )
        return JSON({"messages": [record_dict(r) for r in recs]})

    async def message(request: Request) -> JSON:
        mid = request.path_params["id"]
        rec = await transport.message(mid)
        if rec is None:
            return error(404, "unknown_message", f"no message with id {mid!r}")
        history = await transport.history(mid)
        return JSON({"message": record_dict(rec), "history": [e.to_dict() for e in history]})

    async def dlq_list(request: Request) -> JSON:
        dls = await transport.dead_letters(flow=request.query_params.get("flow"), limit=_limit(request))
        return JSON({"dead_letters": [d.to_dict() for d in dls]})

    async def dlq_show(request: Request) -> JSON:
        dl = await transport.dead_letter(request.path_params["id"])
        if dl is None:
            return error(404, "unknown_dead_letter", f"no dead letter {request.path_params['id']!r}")
        return JSON(dl.to_dict())

    async def dlq_replay_one(request: Request) -> JSON:
        mid = request.path_params["id"]
        ok = await runtime.replay(mid)
        if not ok:
            return error(404, "unknown_dead_letter", f"no dead letter {mid!r}")
        return JSON({"replayed": [mid]})

    async def dlq_replay_many(request: Request) -> JSON:
        body = await _json_body(request)
        replayed = await runtime.replay_all(flow=body.get("flow"))
        return JSON({"replayed": replayed})

    async def dlq_purge(request: Request) -> JSON:
        body = await _json_body(request)
        ids = body.get("ids")
        if ids is None and not body.get("all") and not body.get("flow"):
            return error(400, "purge_needs_scope", "give 'ids', 'flow' or 'all': true")
        if ids is None:
            dls = await transport.dead_letters(flow=body.get("flow"), limit=1_000_000)
            ids = [d.message_id for d in dls]
        return JSON({"purged": await transport.purge(ids)})

    return [
        Route("/api/v1/flows", flows, methods=["GET"]),
        Route("/api/v1/messages", messages, methods=["GET"]),
        Route("/api/v1/messages/{id}", message, methods=["GET"]),
        Route("/api/v1/dlq", dlq_list, methods=["GET"]),
        Route("/api/v1/dlq/replay", dlq_replay_many, methods=["POST"]),
        Route("/api/v1/dlq/purge", dlq_purge, methods=["POST"]),
        Route("/api/v1/dlq/{id}", dlq_show, methods=["GET"]),
        Route("/api/v1/dlq/{id}/replay", dlq_replay_one, methods=["POST"]),
    ]
