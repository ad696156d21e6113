"""``POST /oauth/token``: the OAuth 2.0 client credentials grant (RFC 6749 §4.4).

Client authentication is HTTP Basic with form-urlencoded id and secret (§2.3.1) or the
``client_id``/``client_secret`` form fields, never both. Errors follow §5.2:
``{"error", "error_description"}``; every 401 carries ``WWW-Authenticate: Basic`` (HTTP
requires a challenge on 401, and §5.2 requires it when Basic was tried). Secrets are checked in
a worker thread (PBKDF2 is deliberately slow) and never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote_plus

import anyio
import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bus.security.clients import ClientRegistry, parse_scopes
from bus.security.ratelimit import TokenBucket
from bus.security.tokens import TokenService

MAX_BODY = 8 * 1024  # a token request is a handful of short fields
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
log = structlog.get_logger(__name__)


class OAuthError(Exception):
    """A refused token request: ``error`` code, description and HTTP status (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def token_route(registry: ClientRegistry, tokens: TokenService, *, path: str = "/oauth/token",
                limiter: TokenBucket | None = None, realm: str = "tieline") -> Route:
    """A Starlette route issuing access tokens; ``limiter`` throttles per client IP."""

    async def endpoint(request: Request) -> Response:
        if limiter is not None:
            wait = limiter.take(("oauth", request.client.host if request.client else "-"))
            if wait > 0:
                return _error(OAuthError("too_many_requests", "too many token requests", 429),
                              realm, {"Retry-After": str(max(1, math.ceil(wait)))})
        client_id = None
        try:
            form = await _read_form(request)
            client_id, secret = _credentials(request, form)
            grant = form.get("grant_type")
            if grant is None:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant != "client_credentials":
                raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
            client = await anyio.to_thread.run_sync(registry.authenticate, client_id, secret)
            if client is None:
                raise OAuthError("invalid_client", "client authentication failed", 401)
            scopes = _scopes(form.get("scope"), client.scopes)
        except OAuthError as exc:
            log.info("oauth.refused", client_id=client_id, error=exc.error)
            return _error(exc, realm)
        issued = tokens.issue(client.client_id, scopes)
        log.info("oauth.issued", client_id=client.client_id, scope=issued.scope,
                 expires_in=issued.expires_in)
        body = {"access_token": issued.access_token, "token_type": "Bearer",
                "expires_in": issued.expires_in, "scope": issued.scope}
        return Response(orjson.dumps(body), 200, _NO_STORE, media_type="application/json")

    return Route(path, endpoint, methods=["POST"], name="oauth_token")


async def _read_form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send the body as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise OAuthError("invalid_request", f"body over {MAX_BODY} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "body is not UTF-8 form data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # §3.2: parameters must not repeat
            raise OAuthError("invalid_request", f"parameter {name!r} given more than once")
        if value:  # §3.2: a parameter without a value counts as omitted
            form[name] = value
    return form


def _credentials(request: Request, form: Mapping[str, str]) -> tuple[str, str]:
    header = request.headers.get("authorization")
    in_form = "client_id" in form or "client_secret" in form
    if header is not None:
        if in_form:
            raise OAuthError("invalid_request", "use either HTTP Basic or client_id/client_secret "
                             "form fields, not both")
        return _basic(header)
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    raise OAuthError("invalid_client", "client authentication required (HTTP Basic or "
                     "client_id and client_secret form fields)", 401)


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "only HTTP Basic client authentication is supported", 401)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise OAuthError("invalid_client", "Authorization: Basic is not base64 of UTF-8", 401) from None
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep or not raw_id:
        raise OAuthError("invalid_client", "Authorization: Basic must hold id:secret", 401)
    try:  # §2.3.1: id and secret are form-urlencoded before they are joined and encoded
        return unquote_plus(raw_id, errors="strict"), unquote_plus(raw_secret, errors="strict")
    except UnicodeDecodeError:
        raise OAuthError("invalid_client", "Authorization: Basic id or secret is not "
                         "percent-encoded UTF-8", 401) from None


def _scopes(requested: str | None, granted: frozenset[str]) -> frozenset[str]:
    if requested is None:
        return granted
    try:
        wanted = parse_scopes(requested)
    except ValueError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    extra = sorted(wanted - granted)
    if extra:
        raise OAuthError("invalid_scope", f"scope {extra[0]!r} is not granted to this client")
    return wanted or granted


def _error(exc: OAuthError, realm: str, headers: Mapping[str, str] | None = None) -> Response:
    extra = dict(_NO_STORE, **(headers or {}))
    if exc.status == 401:
        extra["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
    body = {"error": exc.error, "error_description": exc.description}
    return Response(orjson.dumps(body), exc.status, extra, media_type="application/json")
