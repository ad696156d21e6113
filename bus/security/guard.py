"""Bearer-token guard for Starlette routes (RFC 6750) with scope checks.

``guard.require("flows:read")`` decorates an endpoint; ``RequireScopes(app, guard=..., scopes=...)``
wraps any ASGI app (a Mount, a sub-router). Both put a :class:`Principal` on
``request.state.principal``. No or a non-Bearer ``Authorization`` → 401 with a bare challenge
(RFC 6750 §3.1: no error code when no credentials were sent); a bad token → 401
``invalid_token``; a missing scope → 403 ``insufficient_scope``. Bodies use the API's shared
error shape.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bus.http.responses import error
from bus.security.clients import ClientRegistry
from bus.security.tokens import TokenError, TokenService

Endpoint = Callable[[Request], Awaitable[Response]]
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')  # RFC 6750 §3 error_description charset


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the client, its token's scopes and its field allow-lists per flow."""

    client_id: str
    scopes: frozenset[str]
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    jti: str = ""

    def allowed_fields(self, flow: str) -> tuple[str, ...] | None:
        """The allow-list for ``flow``, or None when the client is not restricted on it."""
        return self.fields.get(flow)


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, challenge: str, details: object = None):
        super().__init__(message)
        self.status, self.code, self.challenge, self.details = status, code, challenge, details

    def response(self) -> Response:
        return error(self.status, self.code, str(self), self.details,
                     **{"WWW-Authenticate": self.challenge})


class Guard:
    """Checks bearer tokens against ``tokens`` and the live client list in ``clients``."""

    def __init__(self, tokens: TokenService, clients: ClientRegistry, *, realm: str = "tieline"):
        self._tokens, self._clients, self._realm = tokens, clients, realm

    def authenticate(self, authorization: str | None, scopes: tuple[str, ...] = ()) -> Principal:
        """The principal for an ``Authorization`` header value; AuthError if refused."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError(401, "unauthorized", "a bearer token is required",
                            f'Bearer realm="{self._realm}"')
        try:
            claims = self._tokens.validate(token.strip())
        except TokenError as exc:
            raise self._invalid(str(exc)) from None
        client = self._clients.get(claims.client_id)
        if client is None:  # removed from the configuration since the token was issued
            raise self._invalid("client is no longer registered")
        missing = sorted(set(scopes) - claims.scopes)
        if missing:
            need = " ".join(scopes)
            raise AuthError(403, "insufficient_scope", f"token lacks scope {missing[0]!r}",
                            f'Bearer realm="{self._realm}", error="insufficient_scope", '
                            f'scope="{need}"', {"required": list(scopes), "missing": missing})
        return Principal(claims.client_id, claims.scopes, client.fields, claims.jti)

    def _invalid(self, reason: str) -> AuthError:
        safe = _UNSAFE.sub("?", reason)
        return AuthError(401, "invalid_token", f"invalid bearer token: {reason}",
                         f'Bearer realm="{self._realm}", error="invalid_token", '
                         f'error_description="{safe}"')

    def require(self, *scopes: str) -> Callable[[Endpoint], Endpoint]:
        """Decorate an endpoint so it runs only for a valid token holding every scope."""

        def decorate(endpoint: Endpoint) -> Endpoint:
            @functools.wraps(endpoint)
            async def wrapper(request: Request) -> Response:
                try:
                    principal = self.authenticate(request.headers.get("authorization"), scopes)
                except AuthError as exc:
                    return exc.response()
                request.state.principal = principal
                return await endpoint(request)

            return wrapper

        return decorate


class RequireScopes:
    """ASGI middleware: every HTTP request to ``app`` needs a valid token with ``scopes``."""

    def __init__(self, app: ASGIApp, *, guard: Guard, scopes: tuple[str, ...] = ()):
        self.app, self.guard, self.scopes = app, guard, tuple(scopes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Request(scope).headers.get("authorization")
        try:
            principal = self.guard.authenticate(header, self.scopes)
        except AuthError as exc:
            await exc.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
