"""The management API (``/api/v1``): flows, connectors, the message ledger.

Dead letters and the audit log are in ``api_dlq.py``. Every route declares its scope
(``bus/http/scopes.py``); every refusal uses the shared error shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from bus.http import scopes
from bus.http.responses import JSON, error
from bus.plan import describe_source
from bus.transport.base import MessageRecord, MessageState

if TYPE_CHECKING:
    from bus.runtime import Runtime


class BadRequest(Exception):
    def __init__(self, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.code, self.details = code, details

    def response(self) -> JSON:
        return error(400, self.code, str(self), self.details)


def record_dict(rec: MessageRecord) -> dict[str, Any]:
    env = rec.envelope
    return {
        "id": env.id,
        "flow": env.flow,
        "state": rec.state.value,
        "cursor": env.cursor,
        "attempt": env.attempt,
        "correlation_id": env.correlation_id,
        "flow_version": env.flow_version,
        "first_seen": env.first_seen,
        "available_at": rec.available_at,
        "updated_at": rec.updated_at,
        "error": rec.error,
    }


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest("invalid_json", f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_body", "body must be a JSON object")
    return data


def number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRequest("invalid_parameter", f"{name} must be a number (Unix seconds), got {value!r}") from None


def limit_of(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("invalid_parameter", f"limit must be 1..1000, got {raw!r}")
    return int(raw)


def flow_info(runtime: Runtime, name: str) -> dict[str, Any]:
    f = runtime.flows[name].flow
    return {
        "name": f.name,
        "version": f.version,
        "enabled": runtime.is_enabled(name),
        "from": describe_source(f),
        "location": str(f.loc),
        "concurrency": f.concurrency,
        "steps": [i.label for i in runtime.flows[name].program if i.kind != "jump"],
    }


def handles_bad_requests(endpoint):  # noqa: ANN001, ANN201
    async def wrapper(request: Request):  # noqa: ANN202
        try:
            return await endpoint(request)
        except BadRequest as exc:
            return exc.response()

    wrapper.__name__ = endpoint.__name__
    return wrapper


def routes(runtime: Runtime) -> list[Route]:
    transport = runtime.transport

    def route(path: str, endpoint, scope: str, method: str = "GET") -> Route:  # noqa: ANN001
        guarded = scopes.scoped(runtime, scope)(handles_bad_requests(endpoint))
        return Route(path, guarded, methods=[method])

    async def flows(request: Request) -> JSON:
        out = []
        for name in runtime.flows:
            info = flow_info(runtime, name)
            info["backlog"] = await transport.backlog(name)
            out.append(info)
        return JSON({"flows": out})

    async def flow(request: Request) -> JSON:
        name = request.path_params["name"]
        if name not in runtime.flows:
            return error(404, "unknown_flow", f"no flow named {name!r}")
        info = flow_info(runtime, name)
        info["backlog"] = await transport.backlog(name)
        return JSON(info)

    def toggle(enabled: bool):  # noqa: ANN202
        async def endpoint(request: Request) -> JSON:
            name = request.path_params["name"]
            if name not in runtime.flows:
                return error(404, "unknown_flow", f"no flow named {name!r}")
            runtime.set_enabled(name, enabled)
            await runtime.audit.record(scopes.actor(request), "enable" if enabled else "disable", flow=name)
            return JSON(flow_info(runtime, name))

        endpoint.__name__ = "enable" if enabled else "disable"
        return endpoint

    async def connectors(request: Request) -> JSON:
        out = []
        for name, c in runtime.connectors.items():
            try:
                health = await c.health()
            except Exception as exc:  # noqa: BLE001 - a health probe must not break the listing
                health = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            out.append({"name": name, "type": c.type_name, "actions": sorted(c.actions),
                        "health": health, **runtime.connector_state(name)})
        return JSON({"connectors": out})

    async def messages(request: Request) -> JSON:
        q = request.query_params
        state = q.get("state")
        if state and state not in {s.value for s in MessageState}:
            raise BadRequest("invalid_parameter", f"unknown state {state!r}",
                             {"allowed": [s.value for s in MessageState]})
        recs = await transport.search(
            flow=q.get("flow"),
            state=MessageState(state) if state else None,
            correlation_id=q.get("correlation_id"),
            since=number(q.get("since"), "since"),
            until=number(q.get("until"), "until"),
            limit=limit_of(request),
        )
        return JSON({"messages": [record_dict(r) for r in recs]})

    async def message(request: Request) -> JSON:
        mid = request.path_params["id"]
        rec = await transport.message(mid)
        if rec is None:
            return error(404, "unknown_message", f"no message with id {mid!r}")
        history = await transport.history(mid)
        return JSON({"message": record_dict(rec), "history": [e.to_dict() for e in history]})

    async def reload(request: Request) -> JSON:
        """Validate flows.yaml and mappings again; swap them in if valid."""
        reloader = runtime.reloader_for_api()
        result = await reloader.reload()
        await runtime.audit.record(scopes.actor(request), "reload", ok=result.ok,
                                   errors=len(result.errors))
        if not result.ok:
            return error(422, "invalid_configuration", "the new configuration is invalid; the running one stays",
                         {"errors": result.errors})
        return JSON(result.to_dict())

    return [
        route("/api/v1/reload", reload, scopes.FLOWS_WRITE, "POST"),
        route("/api/v1/flows", flows, scopes.FLOWS_READ),
        route("/api/v1/flows/{name}", flow, scopes.FLOWS_READ),
        route("/api/v1/flows/{name}/enable", toggle(True), scopes.FLOWS_WRITE, "POST"),
        route("/api/v1/flows/{name}/disable", toggle(False), scopes.FLOWS_WRITE, "POST"),
        route("/api/v1/connectors", connectors, scopes.FLOWS_READ),
        route("/api/v1/messages", messages, scopes.MESSAGES_READ),
        route("/api/v1/messages/{id}", message, scopes.MESSAGES_READ),
    ]
