"""The aftership connector against the fake Tracking API on loopback, and its webhook verification."""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from bus.errors import PayloadError, VerificationError
from connectors.aftership import AfterShipConnector
from connectors.base import ConnectorDeps, InboundRequest, PermanentError, RetryableError
from connectors.testing import free_port, serve_app
from connectors.testing.fakes.aftership import (
    SANDBOX_API_KEY,
    SANDBOX_WEBHOOK_SECRET,
    AfterShipState,
    make_aftership_app,
)
from connectors.testing.faults import Faults, with_faults


@pytest.fixture
async def api():
    """The fake API with fault injection: (state, faults, base_url)."""
    state, faults = AfterShipState(), Faults()
    async with serve_app(with_faults(make_aftership_app(state), faults)) as base:
        yield state, faults, base


@pytest.fixture
async def make(api):
    """Build aftership connectors on the fake; closed after the test."""
    made: list[AfterShipConnector] = []

    def build(deps: ConnectorDeps | None = None, **settings) -> AfterShipConnector:
        conn = AfterShipConnector("parcels", {"api_key": SANDBOX_API_KEY, "webhook_secret": SANDBOX_WEBHOOK_SECRET,
                                              "base_url": api[2], **settings}, deps)
        made.append(conn)
        return conn

    yield build
    for conn in made:
        await conn.close()


async def test_create_tracking_returns_the_summary(make, api, ctx):
    """create_tracking posts a flat body with the API key and returns id, tag and the raw tracking."""
    result = await make().call("create_tracking", {"tracking_number": "1Z999", "slug": "ups", "order_id": "A-1001",
                                                    "custom_fields": {"call_id": "call-1"}}, ctx)
    assert (result["tracking_number"], result["slug"], result["tag"]) == ("1Z999", "ups", "Pending")
    assert result["id"] in api[0].trackings and result["raw"]["order_id"] == "A-1001"
    assert result["url"].endswith("/ups/1Z999") and result["last_checkpoint"] is None


async def test_emails_and_smses_become_customers(make, api, ctx):
    """The emails/smses shorthand is sent as customers[] (API 2025-01 and later)."""
    result = await make().call("create_tracking", {"tracking_number": "1Z1", "emails": ["a@example.com"],
                                                    "smses": ["+4915112345678"]}, ctx)
    assert api[0].trackings[result["id"]]["customers"] == [{"email": "a@example.com"},
                                                           {"phone_number": "+4915112345678"}]


async def test_get_tracking_by_id_and_by_number(make, api, ctx):
    """get_tracking finds a tracking by id and by slug + tracking_number, with its last checkpoint."""
    conn = make()
    created = await conn.call("create_tracking", {"tracking_number": "JD0001", "slug": "dhl"}, ctx)
    api[0].update(created["id"], "InTransit", "InTransit_002", "Departed facility")
    by_id = await conn.call("get_tracking", {"id": created["id"]}, ctx)
    by_number = await conn.call("get_tracking", {"slug": "dhl", "tracking_number": "JD0001"}, ctx)
    assert by_id["tag"] == by_number["tag"] == "InTransit"
    assert by_id["last_checkpoint"]["message"] == "Departed facility"
    assert by_number["id"] == created["id"]


@pytest.mark.parametrize(
    ("payload", "message", "status"),
    [
        ({"id": "nope"}, "4004 NotFound: Tracking does not exist.", 404),
        ({"slug": "dhl", "tracking_number": "missing"}, "no tracking dhl/missing", 404),
    ],
    ids=["by-id", "by-number"],
)
async def test_unknown_tracking_is_permanent(make, ctx, payload, message, status):
    """A tracking that does not exist is a PermanentError with AfterShip's message."""
    with pytest.raises(PermanentError, match=message) as info:
        await make().call("get_tracking", payload, ctx)
    assert info.value.status == status


async def test_duplicate_tracking_carries_aftership_meta(make, ctx):
    """AfterShip's error body (meta.code, type, message) goes into the PermanentError."""
    conn = make()
    await conn.call("create_tracking", {"tracking_number": "DUP1", "slug": "dhl"}, ctx)
    with pytest.raises(PermanentError, match="AfterShip 4003 BadRequest: Tracking already exists."):
        await conn.call("create_tracking", {"tracking_number": "DUP1", "slug": "dhl"}, ctx)


async def test_bad_api_key_is_permanent_without_the_key(make, ctx):
    """A wrong key gives 401 'Invalid API key.' as a PermanentError that does not show the key."""
    with pytest.raises(PermanentError, match="Invalid API key") as info:
        await make(api_key="wrong-key-123456").call("create_tracking", {"tracking_number": "X"}, ctx)
    assert info.value.status == 401 and "wrong-key-123456" not in str(info.value)


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 7), (502, None)], ids=["503", "429", "502"])
async def test_overload_is_retryable(make, api, ctx, status, retry_after):
    """5xx and 429 are retryable; Retry-After is honoured."""
    api[1].fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(RetryableError) as info:
        await make().call("create_tracking", {"tracking_number": "R1"}, ctx)
    assert info.value.retry_after == retry_after and api[0].trackings == {}


async def test_rate_limit_reset_header_sets_retry_after(ctx):
    """A 429 without Retry-After waits until X-RateLimit-Reset (Unix time)."""

    async def limited(request):
        return JSONResponse({"meta": {"code": 429, "type": "TooManyRequests", "message": "You have exceeded the API call rate limit."},
                             "data": {}}, status_code=429, headers={"X-RateLimit-Reset": "1000000005"})

    async with serve_app(Starlette(routes=[Route("/trackings", limited, methods=["POST"])])) as base:
        conn = AfterShipConnector("parcels", {"api_key": SANDBOX_API_KEY, "base_url": base},
                                  ConnectorDeps(clock=lambda: 1_000_000_000.0))
        with pytest.raises(RetryableError, match="TooManyRequests") as info:
            await conn.call("create_tracking", {"tracking_number": "R1"}, ctx)
        await conn.close()
    assert info.value.retry_after == 5.0


async def test_timeout_and_connection_refused_are_retryable(make, api, ctx):
    """A slow API and a closed port are retryable and name the host."""
    api[1].slow_next(1, seconds=0.5)
    with pytest.raises(RetryableError, match=r"127\.0\.0\.1.*timed out"):
        await make(timeout=0.1).call("create_tracking", {"tracking_number": "T1"}, ctx)
    with pytest.raises(RetryableError, match="ConnectError"):
        await make(base_url=f"http://127.0.0.1:{free_port()}").call("get_tracking", {"id": "x"}, ctx)


@pytest.mark.parametrize(
    ("action", "payload", "field"),
    [
        ("create_tracking", {}, "tracking_number"),
        ("create_tracking", {"tracking_number": "1", "slug": "UPS!"}, "slug"),
        ("create_tracking", {"tracking_number": "1", "smses": ["0151"]}, "smses"),
        ("create_tracking", {"tracking_number": "1", "colour": "red"}, "colour"),
        ("get_tracking", {"slug": "dhl"}, "payload"),
    ],
    ids=["missing-number", "bad-slug", "bad-phone", "unknown-field", "half-key"],
)
async def test_bad_input_is_permanent_and_sends_nothing(make, api, ctx, action, payload, field):
    """A payload that breaks the action's schema names the field and makes no request."""
    with pytest.raises(PermanentError, match=field):
        await make().call(action, payload, ctx)
    assert api[0].requests == 0


# ----- webhooks -------------------------------------------------------------------------

def offline(deps: ConnectorDeps | None = None, **settings) -> AfterShipConnector:
    """A connector for webhook-only tests: no API server needed."""
    return AfterShipConnector("parcels", {"api_key": SANDBOX_API_KEY, "webhook_secret": SANDBOX_WEBHOOK_SECRET,
                                          **settings}, deps)


def openssl_signature(secret: str, body: bytes) -> str:
    """The signature as AfterShip documents it, computed by openssl, not by our code."""
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", secret, "-binary"], input=body,
                            capture_output=True, check=True).stdout
    return subprocess.run(["base64"], input=digest, capture_output=True, check=True).stdout.decode().strip()


def webhook_body(event: str = "tracking_update", ts: int | None = None, **msg) -> bytes:
    tracking = {"id": "t1", "tracking_number": "1Z999", "slug": "ups", "tag": "OutForDelivery",
                "subtag": "OutForDelivery_001", "checkpoints": [{"tag": "OutForDelivery", "message": "On vehicle"}], **msg}
    return orjson.dumps({"event_id": "3f645f5e-530b-4062-8695-db6a64420af8", "event": event,
                         "ts": int(time.time()) if ts is None else ts, "is_tracking_first_tag": True, "msg": tracking})


def hook(body: bytes, signature: str | None) -> InboundRequest:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["aftership-hmac-sha256"] = signature
    return InboundRequest(method="POST", url="/hooks/parcels", path="/hooks/parcels", headers=headers, query={}, body=body)


def test_openssl_signed_webhook_verifies_and_parses():
    """A webhook signed per AfterShip's docs (openssl) verifies and parses to tracking.updated."""
    conn, body = offline(), webhook_body()
    req = hook(body, openssl_signature(SANDBOX_WEBHOOK_SECRET, body))
    conn.verify(req)
    [event] = conn.parse(req)
    assert event.name == "tracking.updated" and event.dedupe_key == "3f645f5e-530b-4062-8695-db6a64420af8"
    assert (event.body["msg"]["tag"], event.body["msg"]["tracking_number"]) == ("OutForDelivery", "1Z999")


@pytest.mark.parametrize(
    ("signature", "body_change", "message"),
    [(None, b"", "missing header"), ("AAAA", b"", "does not match"), ("ok", b" ", "does not match"),
     ("other-secret", b"", "does not match")],
    ids=["missing", "wrong", "tampered-body", "other-secret"],
)
def test_bad_webhook_signatures_are_rejected(signature, body_change, message):
    """Missing, wrong or stale-body signatures raise VerificationError."""
    body = webhook_body()
    if signature == "ok":
        signature = openssl_signature(SANDBOX_WEBHOOK_SECRET, body)
    elif signature == "other-secret":
        signature = openssl_signature("not-the-secret", body)
    with pytest.raises(VerificationError, match=message):
        offline().verify(hook(body + body_change, signature))


def test_stale_webhooks_are_rejected_when_max_age_is_set():
    """With max_age, a correctly signed webhook whose ts is too old is refused (replay)."""
    old = webhook_body(ts=1_000_000_000)
    conn = offline(max_age=600, deps=ConnectorDeps(clock=lambda: 1_000_000_601.0))
    with pytest.raises(VerificationError, match="older than max_age"):
        conn.verify(hook(old, openssl_signature(SANDBOX_WEBHOOK_SECRET, old)))
    fresh = webhook_body(ts=1_000_000_500)
    conn.verify(hook(fresh, openssl_signature(SANDBOX_WEBHOOK_SECRET, fresh)))


@pytest.mark.parametrize(("event", "name"), [("edd_revise", "tracking.edd_revised"),
                                             ("tracking_pending_time", "tracking.pending")])
def test_other_webhook_events_are_named(event, name):
    """EDD revisions and pending-time alerts get their own event names."""
    [parsed] = offline().parse(hook(webhook_body(event), None))
    assert parsed.name == name


def test_unknown_webhook_events_are_dropped_and_bad_ones_refused():
    """An unknown event code yields no event; a webhook without msg.tag is a PayloadError."""
    assert offline().parse(hook(webhook_body("carrier_news"), None)) == []
    body = orjson.loads(webhook_body())
    del body["msg"]["tag"]
    with pytest.raises(PayloadError, match="msg.tag"):
        offline().parse(hook(orjson.dumps(body), None))


async def test_fake_pushes_signed_webhooks_the_connector_accepts(make, api, ctx, sink):
    """The fake's webhook for a created tracking verifies with the sandbox secret."""
    conn = make()
    created = await conn.call("create_tracking", {"tracking_number": "PUSH1", "slug": "dhl"}, ctx)
    response = await api[0].push(f"{sink.url}/hooks/parcels", created["id"], "Delivered")
    assert response.status_code == 200
    rec = sink.state.requests[0]
    req = InboundRequest(method="POST", url=rec.target, path=rec.path, headers=rec.headers, query={}, body=rec.body)
    conn.verify(req)
    [event] = conn.parse(req)
    assert event.body["msg"]["tag"] == "Delivered" and event.body["msg"]["checkpoints"][-1]["tag"] == "Delivered"


def test_secrets_are_not_in_repr():
    """API key and webhook secret never show in repr()."""
    conn = offline()
    for text in (repr(conn), repr(conn.settings)):
        assert SANDBOX_API_KEY not in text and SANDBOX_WEBHOOK_SECRET not in text
