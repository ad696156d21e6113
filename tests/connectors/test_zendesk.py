"""The zendesk connector against the fake Zendesk on loopback; webhook signatures made by openssl."""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
from types import SimpleNamespace

import jsonschema
import orjson
import pytest

from connectors.base import (
    ConnectorDeps,
    InboundRequest,
    PayloadError,
    PermanentError,
    RetryableError,
    VerificationError,
)
from connectors.testing import free_port, serve_app
from connectors.testing.fakes.zendesk import (
    SANDBOX_API_TOKEN,
    SANDBOX_EMAIL,
    SANDBOX_OAUTH_TOKEN,
    ZendeskState,
    make_zendesk_app,
)
from connectors.testing.faults import Faults, with_faults
from connectors.zendesk import ZendeskConnector

# The signing secret Zendesk documents for its "Test webhook" requests (webhooks/verifying).
TEST_SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
STAMP = "2023-11-14T22:13:20Z"
NEW_TICKET = {"subject": "Printer offline", "comment": {"body": "It does not print."},
              "requester": {"name": "Ann", "email": "ann@example.com"}, "priority": "high", "external_id": "ord-7"}


@pytest.fixture
async def zd():
    """A fake Zendesk behind Faults, and a builder of connectors pointed at it."""
    state, faults, made = ZendeskState(), Faults(), []
    async with serve_app(with_faults(make_zendesk_app(state), faults)) as url:

        def build(**settings) -> ZendeskConnector:
            base = {"base_url": url, "email": SANDBOX_EMAIL, "api_token": SANDBOX_API_TOKEN, "timeout": 2}
            conn = ZendeskConnector("helpdesk", {**base, **settings}, ConnectorDeps(clock=lambda: NOW))
            made.append(conn)
            return conn

        yield SimpleNamespace(state=state, faults=faults, url=url, build=build)
        for conn in made:
            await conn.close()


@pytest.mark.parametrize(
    "settings, ok",
    [
        ({"subdomain": "acme", "email": "a@b.c", "api_token": "t"}, True),
        ({"base_url": "http://localhost:1", "oauth_token": "t", "webhook_secret": "s"}, True),
        ({"subdomain": "acme"}, False),
        ({"email": "a@b.c", "api_token": "t"}, False),
        ({"subdomain": "acme", "email": "a@b.c", "api_token": "t", "oauth_token": "t"}, False),
        ({"subdomain": "acme", "oauth_token": "t", "tokn": "x"}, False),
    ],
    ids=["api-token", "oauth", "no-auth", "no-host", "two-auths", "unknown-key"],
)
def test_config_schema(settings, ok):
    """Settings need a host (subdomain or base_url) and exactly one auth; unknown keys are refused."""
    validator = jsonschema.Draft202012Validator(ZendeskConnector.config_schema)
    assert validator.is_valid(settings) is ok


async def test_create_ticket_sends_idempotency_key_and_returns_summary(zd, ctx):
    """create_ticket POSTs {"ticket"} with API-token auth, Idempotency-Key and traceparent."""
    result = await zd.build().call("create_ticket", NEW_TICKET, ctx)
    assert result == {"id": 1, "status": "new", "priority": "high", "updated_at": zd.state.tickets[1]["updated_at"],
                      "url": f"{zd.url}/api/v2/tickets/1.json", "replayed": False}
    method, path, headers = zd.state.requests[-1]
    assert (method, path) == ("POST", "/api/v2/tickets.json")
    assert headers["idempotency-key"] == ctx.idempotency_key
    assert headers["traceparent"] == ctx.traceparent
    assert base64.b64decode(headers["authorization"].split()[1]).decode() == f"{SANDBOX_EMAIL}/token:{SANDBOX_API_TOKEN}"
    assert zd.state.tickets[1]["external_id"] == "ord-7"


async def test_retry_with_same_key_returns_the_first_ticket(zd, ctx):
    """A retry with the same key and payload gets the original ticket back (x-idempotency-lookup: hit)."""
    conn = zd.build()
    first = await conn.call("create_ticket", NEW_TICKET, ctx)
    again = await conn.call("create_ticket", NEW_TICKET, dataclasses.replace(ctx, attempt=2))
    assert again == {**first, "replayed": True}
    assert len(zd.state.tickets) == 1 and zd.state.idempotent_hits == 1


async def test_same_key_other_payload_is_permanent(zd, ctx):
    """Reusing a key with a different payload is Zendesk's IdempotentRequestError: permanent."""
    conn = zd.build()
    await conn.call("create_ticket", NEW_TICKET, ctx)
    with pytest.raises(PermanentError, match="IdempotentRequestError") as info:
        await conn.call("create_ticket", {**NEW_TICKET, "subject": "other"}, ctx)
    assert info.value.status == 400


async def test_oauth_token_auth(zd, ctx):
    """With oauth_token the connector sends a Bearer token."""
    conn = zd.build(email=None, api_token=None, oauth_token=SANDBOX_OAUTH_TOKEN)
    result = await conn.call("create_ticket", NEW_TICKET, ctx)
    assert result["id"] == 1
    assert zd.state.requests[-1][2]["authorization"] == f"Bearer {SANDBOX_OAUTH_TOKEN}"


async def test_update_comment_get_and_find(zd, ctx):
    """update_ticket and add_comment PUT the ticket; get_ticket and find_by_external_id read it."""
    conn = zd.build()
    await conn.call("create_ticket", NEW_TICKET, ctx)
    updated = await conn.call("update_ticket", {"id": 1, "status": "pending", "tags": ["vip"]}, ctx)
    assert (updated["id"], updated["status"]) == (1, "pending")
    await conn.call("add_comment", {"id": 1, "body": "internal", "public": False, "status": "open"}, ctx)
    assert zd.state.comments[1][-1] == {"body": "internal", "public": False}
    got = await conn.call("get_ticket", {"id": 1}, ctx)
    assert (got["status"], got["ticket"]["tags"]) == ("open", ["vip"])
    found = await conn.call("find_by_external_id", {"external_id": "ord-7"}, ctx)
    assert (found["found"], found["count"], found["id"]) == (True, 1, 1)
    missing = await conn.call("find_by_external_id", {"external_id": "nope"}, ctx)
    assert (missing["found"], missing["id"], missing["tickets"]) == (False, None, [])


@pytest.mark.parametrize(
    "action, payload, status, words",
    [
        ("create_ticket", {**NEW_TICKET, "requester": {"name": "Ann", "email": "not-an-email"}}, 422,
         "RecordInvalid: Record validation errors; requester: Requester: Email is not properly formatted"),
        ("get_ticket", {"id": 99}, 404, "RecordNotFound: Not found"),
    ],
    ids=["422-details", "404"],
)
async def test_vendor_errors_are_permanent_with_zendesk_words(zd, ctx, action, payload, status, words):
    """422 and 404 are permanent errors carrying Zendesk's own error text."""
    with pytest.raises(PermanentError) as info:
        await zd.build().call(action, payload, ctx)
    assert info.value.status == status and words in str(info.value)


async def test_auth_failure_is_permanent_and_hides_the_token(zd, ctx):
    """Wrong credentials: 401 "Couldn't authenticate you", with no credential in the message or repr."""
    conn = zd.build(api_token="wrong-secret-token-123")
    with pytest.raises(PermanentError, match="Couldn't authenticate you") as info:
        await conn.call("get_ticket", {"id": 1}, ctx)
    assert info.value.status == 401
    for text in (str(info.value), repr(conn), repr(conn.settings), repr(conn.http)):
        assert "wrong-secret-token-123" not in text and conn.settings.auth_header not in text


@pytest.mark.parametrize(
    "status, retry_after", [(503, None), (429, 7.0)], ids=["503", "429-retry-after"]
)
async def test_vendor_overload_is_retryable(zd, ctx, status, retry_after):
    """503 and 429 are retryable; Retry-After is carried as retry_after."""
    zd.faults.fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(RetryableError) as info:
        await zd.build().call("get_ticket", {"id": 1}, ctx)
    assert (info.value.status, info.value.retry_after) == (status, retry_after)


async def test_timeout_is_retryable(zd, ctx):
    """No answer within settings.timeout is retryable and names the host."""
    zd.faults.slow_next(1, seconds=1)
    with pytest.raises(RetryableError, match="timeout") as info:
        await zd.build(timeout=0.2).call("get_ticket", {"id": 1}, ctx)
    assert "127.0.0.1" in str(info.value)


async def test_connection_refused_is_retryable(ctx):
    """Nothing listening: retryable, naming the action."""
    conn = ZendeskConnector("helpdesk", {"base_url": f"http://127.0.0.1:{free_port()}", "oauth_token": "x"})
    with pytest.raises(RetryableError, match="get_ticket"):
        await conn.call("get_ticket", {"id": 1}, ctx)
    await conn.close()


@pytest.mark.parametrize(
    "action, payload, field",
    [
        ("create_ticket", {"subject": "no comment"}, "comment"),
        ("create_ticket", {**NEW_TICKET, "priority": "asap"}, "priority"),
        ("update_ticket", {"id": 1}, "(payload)"),
        ("add_comment", {"id": "one", "body": "x"}, "id"),
    ],
    ids=["missing-comment", "bad-priority", "nothing-to-update", "bad-id"],
)
async def test_bad_input_is_permanent_without_a_request(zd, ctx, action, payload, field):
    """Input that breaks the action's schema fails before any request, naming the field."""
    with pytest.raises(PermanentError, match=field.replace("(", r"\(").replace(")", r"\)")):
        await zd.build().call(action, payload, ctx)
    assert zd.state.requests == []


# ----- inbound ----------------------------------------------------------------------
EVENT = {
    "account_id": 22129848, "id": "cbe4028c-7239-495d-b020-f22348516046", "subject": "zen:ticket:5158",
    "time": STAMP, "type": "zen:event-type:ticket.status_changed", "zendesk_event_version": "2022-11-06",
    "detail": {"id": "5158", "status": "OPEN", "priority": "HIGH", "subject": "Printer offline"},
    "event": {"current": "OPEN", "previous": "NEW"},
}


def openssl_signature(secret: str, stamp: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, stamp + body)) computed by the openssl CLI, not by our code."""
    out = subprocess.run(
        'openssl dgst -sha256 -hmac "$KEY" -binary | openssl base64 -A',
        shell=True, input=stamp.encode() + body, capture_output=True, check=True, env={**os.environ, "KEY": secret},
    )
    return out.stdout.decode().strip()


def inbound(body: bytes, headers: dict[str, str]) -> InboundRequest:
    return InboundRequest("POST", "https://bus.example/hooks/helpdesk", "/hooks/helpdesk",
                          {k.lower(): v for k, v in headers.items()}, {}, body)


def signed(body: bytes, stamp: str = STAMP, secret: str = TEST_SECRET) -> InboundRequest:
    return inbound(body, {"X-Zendesk-Webhook-Signature": openssl_signature(secret, stamp, body),
                          "X-Zendesk-Webhook-Signature-Timestamp": stamp})


def receiver() -> ZendeskConnector:
    return ZendeskConnector("helpdesk", {"subdomain": "acme", "oauth_token": "x", "webhook_secret": TEST_SECRET},
                            ConnectorDeps(clock=lambda: NOW))


def test_verify_accepts_a_valid_signature():
    """A body signed as Zendesk signs it (openssl) within the window is accepted."""
    receiver().verify(signed(orjson.dumps(EVENT)))


@pytest.mark.parametrize(
    "request_, words",
    [
        (inbound(b"{}", {}), "missing"),
        (signed(b"{}", secret="another-secret"), "does not match"),
        (inbound(b'{"a": 2}', {"X-Zendesk-Webhook-Signature": openssl_signature(TEST_SECRET, STAMP, b'{"a": 1}'),
                               "X-Zendesk-Webhook-Signature-Timestamp": STAMP}), "does not match"),
        (signed(b"{}", stamp="2023-11-14T21:00:00Z"), "old"),
        (signed(b"{}", stamp="2023-11-14T23:00:00Z"), "future"),
        (signed(b"{}", stamp="yesterday"), "ISO 8601"),
    ],
    ids=["missing", "wrong-secret", "body-changed", "stale", "future", "bad-timestamp"],
)
def test_verify_rejects(request_, words):
    """Missing, wrong, tampered, stale and malformed signatures are refused, saying why."""
    with pytest.raises(VerificationError, match=words) as info:
        receiver().verify(request_)
    assert TEST_SECRET not in str(info.value)


def test_verify_without_secret_refuses():
    """A connector with no webhook_secret refuses inbound requests rather than trusting them."""
    conn = ZendeskConnector("helpdesk", {"subdomain": "acme", "oauth_token": "x"})
    with pytest.raises(VerificationError, match="webhook_secret"):
        conn.verify(signed(b"{}"))


def test_parse_names_the_event_and_dedupes_on_its_id():
    """The event name is the type without 'zen:event-type:'; the dedupe key is the event id."""
    [event] = receiver().parse(signed(orjson.dumps(EVENT)))
    assert (event.name, event.dedupe_key) == ("ticket.status_changed", EVENT["id"])
    assert event.body["event"] == {"current": "OPEN", "previous": "NEW"}
    jsonschema.validate(event.body, ZendeskConnector.events[event.name])


@pytest.mark.parametrize("body, events", [
    (orjson.dumps({**EVENT, "type": "zen:event-type:user.created"}), 0),
    (orjson.dumps({**EVENT, "type": "zen:event-type:ticket.created"}), 1),
], ids=["other-domain-ignored", "created"])
def test_parse_keeps_declared_ticket_events_only(body, events):
    """Events of types not declared (user.*, organization.*) are acknowledged and dropped."""
    assert len(receiver().parse(signed(body))) == events


@pytest.mark.parametrize("body", [b"not json", b'{"ticket": {"id": 1}}'], ids=["not-json", "trigger-body"])
def test_parse_rejects_what_is_not_a_zendesk_event(body):
    """A body that is not JSON, or lacks the event's type and id, is a PayloadError."""
    with pytest.raises(PayloadError):
        receiver().parse(signed(body))


async def test_fake_works_mounted_under_a_prefix(ctx):
    """The fake serves under /sandbox/zendesk (as the bus mounts it) and builds URLs with the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    state = ZendeskState()
    async with serve_app(Starlette(routes=[Mount("/sandbox/zendesk", make_zendesk_app(state))])) as url:
        conn = ZendeskConnector("helpdesk", {"base_url": f"{url}/sandbox/zendesk", "oauth_token": SANDBOX_OAUTH_TOKEN})
        result = await conn.call("create_ticket", NEW_TICKET, ctx)
        await conn.close()
    assert result["url"] == f"{url}/sandbox/zendesk/api/v2/tickets/1.json"
