"""Bearer guard: RFC 6750 challenges, scopes, the principal, the shared error shape."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route

from bus.http.responses import JSON
from bus.security.clients import ClientRegistry
from bus.security.guard import Guard, RequireScopes
from bus.security.tokens import TokenService, load_keys
from connectors.testing.server import run_in_thread

from .conftest import make_app, make_settings

SETTINGS = make_settings()
TOKENS = TokenService(SETTINGS, load_keys(SETTINGS.signing))
REGISTRY = ClientRegistry(SETTINGS.clients)


async def whoami(request: Request) -> JSON:
    p = request.state.principal
    return JSON({"client_id": p.client_id, "fields": p.allowed_fields("ticket_status")})


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    app = make_app(REGISTRY, TOKENS)
    guarded = RequireScopes(Starlette(routes=[Route("/whoami", whoami)]),
                            guard=Guard(TOKENS, REGISTRY), scopes=("messages:read",))
    app.router.routes.append(Mount("/mw", app=guarded))
    with run_in_thread(app) as url, httpx.Client(base_url=url) as client:
        yield client


def bearer(client_id: str = "sp", scopes=("flows:read", "messages:read")) -> dict[str, str]:
    return {"authorization": "Bearer " + TOKENS.issue(client_id, scopes).access_token}


def test_valid_token_reaches_the_endpoint_with_a_principal(http: httpx.Client) -> None:
    """A token holding the scope passes; request.state.principal names the client."""
    r = http.get("/flows", headers=bearer())
    assert r.status_code == 200
    assert r.json() == {"client_id": "sp", "scopes": ["flows:read", "messages:read"]}


def test_no_token_gets_a_bare_bearer_challenge(http: httpx.Client) -> None:
    """Without credentials: 401, a Bearer challenge without error code (RFC 6750 §3.1)."""
    r = http.get("/flows")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="tieline"'
    assert r.json()["error"]["code"] == "unauthorized"


EXPIRED = TokenService(SETTINGS, load_keys(SETTINGS.signing), clock=lambda: 1_000_000.0)
OTHER_KEY = TokenService(SETTINGS, load_keys(replace(SETTINGS.signing, key="o" * 40)))


@pytest.mark.parametrize(("authorization", "description"), [
    ("Bearer not-a-token", "malformed token"),
    ("Bearer " + EXPIRED.issue("sp", ["flows:read"]).access_token, "token expired"),
    ("Bearer " + OTHER_KEY.issue("sp", ["flows:read"]).access_token, "bad signature"),
    ("Bearer " + TOKENS.issue("retired", ["flows:read"]).access_token, "client is no longer registered"),
    ("Bearer", "malformed token"),
], ids=["garbage", "expired", "wrong-key", "client-removed", "empty-bearer"])
def test_bad_token_is_invalid_token(http: httpx.Client, authorization: str, description: str) -> None:
    """A bad bearer token: 401 invalid_token with its reason, in the API's error shape."""
    r = http.get("/flows", headers={"authorization": authorization})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="tieline", error="invalid_token", error_description="{description}"')
    assert set(r.json()["error"]) == {"code", "message", "details"}
    assert r.json()["error"]["code"] == "invalid_token"


def test_basic_credentials_are_not_a_bearer_token(http: httpx.Client) -> None:
    """Another auth scheme counts as no token."""
    r = http.get("/flows", headers={"authorization": "Basic c3A6eA=="})
    assert (r.status_code, r.headers["www-authenticate"]) == (401, 'Bearer realm="tieline"')


def test_missing_scope_is_403_insufficient_scope(http: httpx.Client) -> None:
    """A valid token without the route's scope: 403, naming what is required."""
    r = http.get("/admin", headers=bearer())
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == (
        'Bearer realm="tieline", error="insufficient_scope", scope="admin:write"')
    assert r.json()["error"] == {"code": "insufficient_scope",
                                 "message": "token lacks scope 'admin:write'",
                                 "details": {"required": ["admin:write"], "missing": ["admin:write"]}}


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"authorization": "Bearer junk"}, 401),
    (bearer(scopes=("flows:read",)), 403),
    (bearer(scopes=("messages:read",)), 200),
], ids=["no-token", "bad-token", "missing-scope", "ok"])
def test_middleware_guards_a_mounted_app(http: httpx.Client, headers, status) -> None:
    """RequireScopes around a Mount enforces the same rules and sets the principal."""
    r = http.get("/mw/whoami", headers=headers)
    assert r.status_code == status
    if status == 200:
        assert r.json() == {"client_id": "sp", "fields": ["id", "status", "updated_at"]}
