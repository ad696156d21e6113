"""POST /oauth/token: client credentials grant per RFC 6749 §4.4, §2.3.1 and §5.2."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from urllib.parse import quote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bus.security.clients import ClientRegistry
from bus.security.ratelimit import TokenBucket
from bus.security.tokens import TokenService, load_keys
from connectors.testing.server import run_in_thread

from .conftest import SECRET, make_app, make_settings

SETTINGS = make_settings()
TOKENS = TokenService(SETTINGS, load_keys(SETTINGS.signing))
FORM = {"content-type": "application/x-www-form-urlencoded"}


def basic(client_id: str, secret: str, *, encode: bool = True) -> dict[str, str]:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}" if encode else f"{client_id}:{secret}"
    return {"authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    app = make_app(ClientRegistry(SETTINGS.clients), TOKENS)
    with run_in_thread(app) as url, httpx.Client(base_url=url) as client:
        yield client


def post(http: httpx.Client, body: str | bytes, headers: dict[str, str] | None = None,
         content_type: dict[str, str] = FORM) -> httpx.Response:
    return http.post("/oauth/token", content=body, headers={**content_type, **(headers or {})})


def test_basic_auth_issues_a_bearer_token(http: httpx.Client) -> None:
    """Basic auth with form-urlencoded id:secret gets a no-store Bearer token for every scope."""
    r = post(http, "grant_type=client_credentials", basic("sp", SECRET))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["scope"] == "flow:ticket_status flows:read messages:read"
    assert TOKENS.validate(body["access_token"]).client_id == "sp"


def test_form_credentials_issue_a_token(http: httpx.Client) -> None:
    """client_id and client_secret form fields authenticate as well."""
    r = post(http, "grant_type=client_credentials&client_id=ops&client_secret=ops-secret")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "flows:read"


def test_requested_scope_narrows_the_token(http: httpx.Client) -> None:
    """A subset of the client's scopes yields a token with exactly that subset."""
    r = post(http, "grant_type=client_credentials&scope=flows:read", basic("sp", SECRET))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "flows:read"
    assert TOKENS.validate(r.json()["access_token"]).scopes == {"flows:read"}


CASES = [
    pytest.param("grant_type=client_credentials", basic("sp", "wrong"), 401, "invalid_client",
                 id="wrong-secret"),
    pytest.param("grant_type=client_credentials", basic("nobody", SECRET), 401, "invalid_client",
                 id="unknown-client"),
    pytest.param("grant_type=client_credentials", basic("sp", SECRET, encode=False), 401,
                 "invalid_client", id="basic-not-form-urlencoded"),
    pytest.param("grant_type=client_credentials", {}, 401, "invalid_client", id="no-credentials"),
    pytest.param("grant_type=client_credentials", {"authorization": "Basic !!notbase64!!"}, 401,
                 "invalid_client", id="bad-basic-encoding"),
    pytest.param("grant_type=client_credentials",
                 {"authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, 401,
                 "invalid_client", id="basic-without-colon"),
    pytest.param("grant_type=client_credentials",
                 {"authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}, 401,
                 "invalid_client", id="basic-not-utf8"),
    pytest.param("grant_type=client_credentials", {"authorization": "Bearer abc"}, 401,
                 "invalid_client", id="other-auth-scheme"),
    pytest.param("grant_type=client_credentials&client_id=ops&client_secret=ops-secret",
                 basic("sp", SECRET), 400, "invalid_request", id="basic-and-form-credentials"),
    pytest.param("grant_type=client_credentials&client_id=sp", {}, 401, "invalid_client",
                 id="form-id-without-secret"),
    pytest.param("scope=flows:read", basic("sp", SECRET), 400, "invalid_request",
                 id="missing-grant-type"),
    pytest.param("grant_type=", basic("sp", SECRET), 400, "invalid_request",
                 id="empty-grant-type-is-omitted"),
    pytest.param("grant_type=password&username=a&password=b", basic("sp", SECRET), 400,
                 "unsupported_grant_type", id="password-grant"),
    pytest.param("grant_type=client_credentials&grant_type=client_credentials",
                 basic("sp", SECRET), 400, "invalid_request", id="repeated-parameter"),
    pytest.param("grant_type=client_credentials&scope=admin:write", basic("sp", SECRET), 400,
                 "invalid_scope", id="scope-not-granted"),
    pytest.param("grant_type=client_credentials&scope=flows:read%20admin:write",
                 basic("sp", SECRET), 400, "invalid_scope", id="scope-partly-granted"),
    pytest.param('grant_type=client_credentials&scope=fl"ows', basic("sp", SECRET), 400,
                 "invalid_scope", id="scope-bad-characters"),
    pytest.param(b"grant_type=\xff", basic("sp", SECRET), 400, "invalid_request", id="body-not-utf8"),
    pytest.param("grant_type=client_credentials&pad=" + "x" * 9000, basic("sp", SECRET), 400,
                 "invalid_request", id="body-too-large"),
]


@pytest.mark.parametrize(("body", "headers", "status", "code"), CASES)
def test_refusals_follow_rfc6749_section_5_2(http: httpx.Client, body, headers, status, code) -> None:
    """Each malformed or unauthorised request gets its §5.2 error, no-store, no token."""
    r = post(http, body, headers)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert set(r.json()) == {"error", "error_description"}
    assert r.headers["cache-control"] == "no-store"
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic ")


def test_json_body_is_refused(http: httpx.Client) -> None:
    """The token endpoint takes form encoding only (RFC 6749 §4.4.2)."""
    r = post(http, '{"grant_type": "client_credentials"}', basic("sp", SECRET),
             content_type={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


def test_unknown_client_and_wrong_secret_look_the_same(http: httpx.Client) -> None:
    """The response does not tell an unknown client id from a wrong secret."""
    wrong = post(http, "grant_type=client_credentials", basic("sp", "nope"))
    unknown = post(http, "grant_type=client_credentials", basic("ghost", "nope"))
    assert wrong.content == unknown.content and wrong.status_code == unknown.status_code


def test_secret_never_logged_nor_echoed(http: httpx.Client) -> None:
    """Neither a right nor a wrong secret appears in log events or response bodies."""
    wrong = "wrong-" + SECRET
    with capture_logs() as logs:
        ok = post(http, "grant_type=client_credentials", basic("sp", SECRET))
        bad = post(http, "grant_type=client_credentials", basic("sp", wrong))
        form = post(http, f"grant_type=client_credentials&client_id=sp&client_secret={quote_plus(wrong)}")
    assert [e["event"] for e in logs] == ["oauth.issued", "oauth.refused", "oauth.refused"]
    for text in (repr(logs), ok.text, bad.text, form.text):
        assert SECRET not in text and quote_plus(SECRET) not in text


def test_token_endpoint_rate_limit_per_ip() -> None:
    """Past the burst, the endpoint answers 429 with Retry-After before checking secrets."""
    app = make_app(ClientRegistry(SETTINGS.clients), TOKENS, limiter=TokenBucket(0.01, 2))
    with run_in_thread(app) as url, httpx.Client(base_url=url) as client:
        codes = [post(client, "grant_type=client_credentials", basic("sp", SECRET))
                 for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1


ERROR_CODES = {"invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"}
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80)
form_field = st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "x"])


# The fuzz calls the same app in-process: over loopback each example pays a delayed ACK.
FUZZ_APP = make_app(ClientRegistry(SETTINGS.clients), TOKENS)


async def _inproc_post(body: str | bytes, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=FUZZ_APP, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bus") as client:
        return await client.post("/oauth/token", content=body, headers={**FORM, **headers})


@hsettings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(form_field, st.text(max_size=30)), max_size=6),
       raw=st.binary(max_size=60), use_raw=st.booleans(),
       auth=st.one_of(st.none(), header_text, header_text.map(lambda t: "Basic " + t),
                      st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_form_and_auth_fuzz_never_5xx(fields, raw, use_raw, auth) -> None:
    """Random bodies and Authorization headers get a documented 200/400/401, never a 5xx."""
    body = raw if use_raw else "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields)
    auth = auth.strip() if auth is not None else None  # HTTP trims header values anyway
    r = asyncio.run(_inproc_post(body, {"authorization": auth} if auth is not None else {}))
    assert r.status_code in (200, 400, 401), r.text
    if r.status_code != 200:
        assert r.json()["error"] in ERROR_CODES
