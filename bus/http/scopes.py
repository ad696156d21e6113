"""Scope checks for management routes: a route declares its scope; the guard enforces it.

With no ``security:`` in flows.yaml the API is open (the server binds to 127.0.0.1 by default);
with it, every scoped route needs a bearer token carrying that scope (401 without, 403 short).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from bus.runtime import Runtime

Endpoint = Callable[[Request], Awaitable[Response]]

FLOWS_READ, FLOWS_WRITE = "flows:read", "flows:write"
MESSAGES_READ = "messages:read"
DLQ_READ, DLQ_REPLAY, DLQ_PURGE = "dlq:read", "dlq:replay", "dlq:purge"
EVENTS_SEND = "events:send"
ALL = (FLOWS_READ, FLOWS_WRITE, MESSAGES_READ, DLQ_READ, DLQ_REPLAY, DLQ_PURGE, EVENTS_SEND)


def flow_scope(flow: str) -> str:
    """The per-flow scope a client needs to call a sync API flow."""
    return f"flow:{flow}"


def scoped(runtime: Runtime, scope: str) -> Callable[[Endpoint], Endpoint]:
    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            guard = runtime.guard
            if guard is not None:
                from bus.security.guard import AuthError

                try:
                    request.state.principal = guard.authenticate(
                        request.headers.get("authorization"), (scope,)
                    )
                except AuthError as exc:
                    return exc.response()
            return await endpoint(request)

        wrapper.__tieline_scope__ = scope  # type: ignore[attr-defined]
        return wrapper

    return decorate


def actor(request: Request) -> str:
    """Who is calling, for the audit log."""
    principal = getattr(request.state, "principal", None)
    return principal.client_id if principal is not None else "anonymous (no security configured)"
