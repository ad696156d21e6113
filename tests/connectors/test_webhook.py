"""The webhook connector: verification, parsing, dedupe keys, and the signed 'send' action."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from bus.errors import TielineError
from connectors import signing
from connectors.base import (
    ConnectorDeps,
    InboundRequest,
    PayloadError,
    PermanentError,
    RetryableError,
)
from connectors.registry import ConnectorRegistry, event_names
from connectors.webhook import WebhookConnector

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_700_000_000
BODY = b'{"type": "parcel.delivered", "data": {"id": "p-9", "status": "delivered"}}'


def hook(clock: float = NOW, **settings) -> WebhookConnector:
    """A webhook connector built through the registry (so settings are schema-checked)."""
    registry = ConnectorRegistry()
    registry.register(WebhookConnector)
    deps = ConnectorDeps(clock=lambda: clock)
    return registry.build("carrier", "webhook", settings, deps)  # type: ignore[return-value]


def request(body: bytes = BODY, **headers: str) -> InboundRequest:
    return InboundRequest(
        method="POST", url="http://bus/hooks/carrier", path="/hooks/carrier",
        headers={k.replace("_", "-").lower(): v for k, v in headers.items()}, query={}, body=body,
    )


def ref_signed(body: bytes = BODY, ts: int = NOW, secret: str = SECRET, msg_id: str = "msg_1") -> InboundRequest:
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return request(body, webhook_id=msg_id, webhook_timestamp=str(ts), webhook_signature=sig)


def _headers(req: InboundRequest) -> dict[str, str]:
    return {k.replace("-", "_"): v for k, v in req.headers.items()}


def test_standard_accepts_reference_signed_request():
    """A request signed by the standardwebhooks package passes verify()."""
    hook(verify="standard", secret=SECRET).verify(ref_signed())


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (ref_signed(ts=NOW - 301), "too old"),
        (ref_signed(ts=NOW + 301), "too new"),
        (ref_signed(secret="whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="), "no matching signature"),
        (request(), "missing header"),
        (request(BODY.replace(b"p-9", b"p-8"), **_headers(ref_signed())), "no matching signature"),
    ],
    ids=["stale", "future", "wrong-secret", "unsigned", "tampered"],
)
def test_standard_refuses(req, reason):
    """Stale, future, wrongly signed, unsigned and tampered requests are refused with a reason."""
    with pytest.raises(signing.VerificationError, match=reason):
        hook(verify="standard", secret=SECRET).verify(req)


def test_tolerance_setting_widens_the_window():
    """'tolerance' lets an older timestamp through."""
    hook(verify="standard", secret=SECRET, tolerance=900).verify(ref_signed(ts=NOW - 600))


def test_github_verification():
    """verify: github checks X-Hub-Signature-256 against the raw secret."""
    conn = hook(verify="github", secret="gh-secret")
    conn.verify(request(x_hub_signature_256=signing.sign_github("gh-secret", BODY)))
    with pytest.raises(signing.VerificationError, match="does not match"):
        conn.verify(request(x_hub_signature_256=signing.sign_github("other", BODY)))


def test_verify_none_accepts_anything():
    """verify: none (the default) accepts an unsigned request."""
    hook().verify(request())


def test_parse_one_event_named_received_with_webhook_id_as_dedupe_key():
    """Without event_field the body is one 'received' event; the webhook-id header dedupes it."""
    [event] = hook(verify="standard", secret=SECRET).parse(ref_signed(msg_id="msg_42"))
    assert event.name == "received"
    assert event.body == orjson.loads(BODY)
    assert event.dedupe_key == "msg_42"


def test_parse_array_gives_one_event_per_item():
    """A JSON array is one event per item; a header key is suffixed with the item index."""
    events = hook().parse(request(b'[{"n": 1}, {"n": 2}]', webhook_id="msg_7"))
    assert [(e.body, e.dedupe_key) for e in events] == [({"n": 1}, "msg_7#0"), ({"n": 2}, "msg_7#1")]


def test_dedupe_field_wins_over_header():
    """dedupe_field takes the key from the body (dotted path); absent field means no key."""
    conn = hook(dedupe_field="data.id")
    assert conn.parse(request(webhook_id="msg_1"))[0].dedupe_key == "p-9"
    assert conn.parse(request(b'{"data": {}}'))[0].dedupe_key is None


def test_no_dedupe_key_without_header_or_field():
    """Without header or dedupe_field the event has no dedupe key."""
    assert hook().parse(request())[0].dedupe_key is None


def test_github_delivery_header_is_the_default_dedupe_key():
    """GitHub's X-GitHub-Delivery id dedupes when there is no webhook-id."""
    assert hook().parse(request(x_github_delivery="d-1"))[0].dedupe_key == "d-1"


def test_event_field_names_events_and_drops_unlisted():
    """event_field picks the name from the body; names outside 'events' are dropped, not refused."""
    conn = hook(event_field="type", events=["parcel.delivered", "parcel.lost"])
    assert event_names(conn) == {"parcel.delivered", "parcel.lost"}
    assert [e.name for e in conn.parse(request())] == ["parcel.delivered"]
    with capture_logs() as logs:
        assert conn.parse(request(b'{"type": "parcel.scanned"}')) == []
    assert logs[0]["event"] == "webhook_event_ignored" and logs[0]["event_name"] == "parcel.scanned"


def test_event_field_missing_is_payload_error():
    """A body without the event field is a PayloadError naming the field."""
    conn = hook(event_field="meta.kind", events=["x"])
    with pytest.raises(PayloadError, match=r"item 1 has no string field 'meta.kind'"):
        conn.parse(request(b'[{"meta": {"kind": "x"}}, {"meta": {}}]'))


def test_default_event_names():
    """Without event_field the only event is 'received'."""
    assert hook().event_names() == {"received"}


def test_invalid_json_names_line_and_column():
    """A body that is not JSON is a PayloadError saying what and where."""
    with pytest.raises(PayloadError, match=r"body is not valid JSON: .+ at line 2 col 3"):
        hook().parse(request(b'{"a": 1,\n  oops}'))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"verify": "standard"}, "'secret' is a required property"),
        ({"event_field": "type"}, "'events' is a dependency of 'event_field'"),
        ({"verify": "hmac", "secret": "x"}, "settings.verify"),
        ({"url": "http://x", "secret": "whsec_!!notbase64!!"}, "not valid base64"),
        ({"verifi": "none"}, "'verifi' was unexpected"),
    ],
    ids=["standard-without-secret", "event-field-without-events", "unknown-mode", "bad-secret", "typo"],
)
def test_bad_settings_are_refused_at_build(settings, message):
    """Inconsistent settings fail when the connector is built, naming the connector and the field."""
    with pytest.raises(TielineError, match="connector 'carrier'") as info:
        hook(**settings)
    assert message in str(info.value)
    assert "notbase64" not in str(info.value)  # the secret itself is never echoed


async def test_send_signs_verifiably_and_retries_carry_the_same_id(sink, ctx):
    """'send' posts a Standard Webhook the reference verifies; a retry reuses webhook-id."""
    conn = hook(clock=time.time(), url=sink.url + "/in", secret=SECRET)
    await conn.start()
    try:
        result = await conn.call("send", {"order": "o-1"}, ctx)
        await conn.call("send", {"order": "o-1"}, ctx)  # a retry of the same step
    finally:
        await conn.close()
    assert result["ok"] is True
    [got] = sink.state.delivered
    assert sink.state.duplicates == 1
    assert got.headers["webhook-id"] == ctx.idempotency_key
    assert got.headers["traceparent"] == ctx.traceparent
    assert Webhook(SECRET).verify(got.body, got.headers) == {"order": "o-1"}


async def test_send_errors_are_classified(sink, ctx):
    """A 503 from the receiver is retryable; no url is permanent."""
    sink.state.fail_next(1, status=503, retry_after=2)
    conn = hook(url=sink.url, secret=SECRET)
    try:
        with pytest.raises(RetryableError) as info:
            await conn.call("send", {}, ctx)
        assert info.value.retry_after == 2.0
    finally:
        await conn.close()
    with pytest.raises(PermanentError, match="settings.url is not set"):
        await hook().call("send", {}, ctx)
