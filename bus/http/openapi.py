"""The OpenAPI 3.1 document of the management API, generated from the live route table.

Paths, methods, path parameters and required scopes come from the routes themselves (each
endpoint carries its scope), so the document cannot drift from what is served; query
parameters and bodies are declared here, next to their names, and a test checks every route is
described.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        }
    },
}

_TIME = {"type": "number", "description": "Unix seconds"}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
QUERY: dict[str, list[dict[str, Any]]] = {
    "/api/v1/messages": [
        {"name": "flow", "in": "query", "schema": {"type": "string"}},
        {"name": "state", "in": "query",
         "schema": {"enum": ["queued", "delivered", "filtered", "dead", "purged"]}},
        {"name": "correlation_id", "in": "query", "schema": {"type": "string"}},
        {"name": "since", "in": "query", "schema": _TIME},
        {"name": "until", "in": "query", "schema": _TIME},
        _LIMIT,
    ],
    "/api/v1/dlq": [{"name": "flow", "in": "query", "schema": {"type": "string"}}, _LIMIT],
    "/api/v1/audit": [{"name": "action", "in": "query", "schema": {"type": "string"}}, _LIMIT],
}
SELECTION = {
    "type": "object",
    "properties": {
        "ids": {"type": "array", "items": {"type": "string"}},
        "flow": {"type": "string"},
        "since": _TIME,
        "until": _TIME,
        "all": {"type": "boolean"},
    },
}
BODIES = {"/api/v1/dlq/replay": SELECTION, "/api/v1/dlq/purge": SELECTION, "/flows/{flow}": {}}


def _operation(route: Route, method: str, scope: str) -> dict[str, Any]:
    doc = (route.endpoint.__doc__ or "").strip().splitlines()
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_')}",
        "summary": doc[0] if doc else route.name,
        "security": [{"oauth2": [scope]}],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
        },
    }
    params = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"{(\w+)}", route.path)
    ] + QUERY.get(route.path, [])
    if params:
        op["parameters"] = params
    if method == "POST" and route.path in BODIES:
        op["requestBody"] = {"content": {"application/json": {"schema": BODIES[route.path]}}}
    if route.path == "/flows/{flow}":
        op["responses"]["202"] = {"description": "accepted"}
        op["responses"]["409"] = {"$ref": "#/components/responses/Error"}
        op["responses"]["413"] = {"$ref": "#/components/responses/Error"}
        op["responses"]["503"] = {"$ref": "#/components/responses/Error"}
    return op


def document(routes: list[Any], *, version: str = "0.1.0") -> dict[str, Any]:
    """Every route whose endpoint declares a scope becomes an operation."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        scope = getattr(getattr(route, "endpoint", None), "__tieline_scope__", None)
        if not isinstance(route, Route) or scope is None:
            continue
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            paths.setdefault(route.path, {})[method.lower()] = _operation(route, method, scope)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tieline management API", "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "responses": {
                "Error": {
                    "description": "refused; the body says why",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {
                        "flows:read": "read flows, connectors and statistics",
                        "flows:write": "enable, disable and reload flows",
                        "messages:read": "search the ledger",
                        "dlq:read": "read dead letters and the audit log",
                        "dlq:replay": "replay dead letters",
                        "dlq:purge": "purge dead letters",
                        "events:send": "put messages into flows",
                    }}},
                }
            },
        },
    }
