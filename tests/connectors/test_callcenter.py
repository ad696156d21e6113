"""The callcenter connector: Standard Webhooks verification, event parsing, send_event."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook  # the reference implementation, independent of ours
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bus.errors import PayloadError, VerificationError
from connectors.base import ConnectorDeps, InboundRequest, PermanentError, RetryableError
from connectors.callcenter import EVENT_TYPES, CallCenterConnector, load_schemas, sign_event
from connectors.testing import free_port, serve_app
from connectors.testing.fakes.callcenter import (
    SANDBOX_SECRET,
    CallCenterSender,
    CallCenterState,
    make_callcenter_app,
    sample_data,
)
from connectors.testing.faults import Faults, with_faults

NOW = 1_714_555_800.0  # 2024-05-01T09:30:00Z


def make(now: float = NOW, **settings) -> CallCenterConnector:
    return CallCenterConnector("calls", {"secret": SANDBOX_SECRET, **settings}, ConnectorDeps(clock=lambda: now))


def envelope(kind: str = "call.completed", **data) -> dict:
    return {"type": kind, "timestamp": "2024-05-01T09:34:10Z", "data": {**sample_data(kind), **data}}


def reference_signed(payload: dict, msg_id: str = "msg_1", ts: float = NOW) -> tuple[bytes, dict[str, str]]:
    """Body and headers signed by the standardwebhooks package."""
    body = json.dumps(payload)
    sig = Webhook(SANDBOX_SECRET).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body)
    return body.encode(), {"webhook-id": msg_id, "webhook-timestamp": str(int(ts)), "webhook-signature": sig}


def request(body: bytes, headers: dict[str, str]) -> InboundRequest:
    return InboundRequest(method="POST", url="https://bus.example/hooks/calls", path="/hooks/calls",
                          headers={k.lower(): v for k, v in headers.items()}, query={}, body=body)


def test_valid_reference_signature_is_accepted_and_parsed():
    """A body signed by the standardwebhooks library verifies and parses into one event."""
    conn = make()
    body, headers = reference_signed(envelope())
    req = request(body, headers)
    conn.verify(req)
    [event] = conn.parse(req)
    assert event.name == "call.completed"
    assert event.body["data"]["ivr"]["selections"][0]["key"] == "2"
    assert event.dedupe_key == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header"),
        (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), "no matching signature"),
        (lambda h, b: (h, b.replace(b"answered", b"abandoned")), "no matching signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), "no matching signature"),
    ],
    ids=["missing", "wrong-signature", "tampered-body", "other-id"],
)
def test_bad_signatures_are_rejected(mutate, message):
    """Missing, wrong or replayed-with-changes signatures raise VerificationError."""
    body, headers = reference_signed(envelope())
    headers, body = mutate(headers, body)
    with pytest.raises(VerificationError, match=message):
        make().verify(request(body, headers))


@pytest.mark.parametrize("skew", [-301, 301], ids=["too-old", "too-new"])
def test_timestamps_outside_five_minutes_are_rejected(skew):
    """A signature more than 300 s away from the receiver's clock is refused (replay protection)."""
    body, headers = reference_signed(envelope(), ts=NOW + skew)
    with pytest.raises(VerificationError, match="timestamp too"):
        make().verify(request(body, headers))


def test_sign_event_matches_the_reference_verifier():
    """sign_event produces headers the standardwebhooks library accepts."""
    body, headers = sign_event(SANDBOX_SECRET, envelope("call.started"), msg_id="msg_x")
    assert Webhook(SANDBOX_SECRET).verify(body, headers)["type"] == "call.started"


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_event_type_parses(kind):
    """Each documented event type, with its sample data, parses to an event of that name."""
    body, headers = reference_signed(envelope(kind))
    [event] = make().parse(request(body, headers))
    assert event.name == kind and event.body["type"] == kind


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        (orjson.dumps({"type": "call.exploded", "timestamp": "2024-05-01T09:30:00Z", "data": {}}), "unknown event type"),
        (orjson.dumps(envelope(direction="sideways")), "data.direction"),
        (orjson.dumps({**envelope(), "timestamp": "yesterday"}), "timestamp"),
        (orjson.dumps(envelope("transcript.segment", speaker="robot")), "data.speaker"),
        (orjson.dumps({"type": "recording.ready", "timestamp": "2024-05-01T09:30:00Z",
                       "data": {"call_id": "c"}}), "recording_url"),
    ],
    ids=["not-json", "unknown-type", "bad-enum", "bad-timestamp", "bad-speaker", "missing-field"],
)
def test_malformed_bodies_are_payload_errors_naming_the_field(payload, message):
    """A body that breaks the documented format is a PayloadError (400) naming what is wrong."""
    with pytest.raises(PayloadError, match=message):
        make().parse(request(payload, {}))


def test_schemas_are_package_data_and_exposed_as_events():
    """The event schemas load from the package and are the connector's declared events."""
    schemas = load_schemas()
    assert set(schemas) == set(EVENT_TYPES) == set(CallCenterConnector.events)
    for schema in schemas.values():
        assert schema["properties"]["data"]["description"]


def test_secret_is_not_in_repr_or_errors():
    """The signing secret never shows in repr() or a verification error."""
    conn = make()
    body, headers = reference_signed(envelope())
    with pytest.raises(VerificationError) as info:
        conn.verify(request(body, {**headers, "webhook-signature": "v1,AAAA"}))
    for text in (repr(conn), repr(conn.settings), str(info.value)):
        assert SANDBOX_SECRET not in text and SANDBOX_SECRET.removeprefix("whsec_") not in text


def test_malformed_secret_fails_at_load():
    """A secret that is not whsec_<base64> is refused when the connector is built."""
    with pytest.raises(ValueError, match="base64"):
        CallCenterConnector("calls", {"secret": "whsec_not base64!"})


# ----- over HTTP: the sender fake into a mini ingress, and send_event into the receiver fake -----

def ingress_app(conn: CallCenterConnector, seen: list) -> Starlette:
    """The smallest ingress: verify + parse, 401/400 on refusal, 202 with the event names."""

    async def hook(request: Request) -> JSONResponse:
        req = InboundRequest(method=request.method, url=str(request.url), path=request.url.path,
                             headers=dict(request.headers), query=dict(request.query_params),
                             body=await request.body())
        try:
            conn.verify(req)
            events = conn.parse(req)
        except (VerificationError, PayloadError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        seen.extend(events)
        return JSONResponse({"events": [e.name for e in events]}, status_code=202)

    return Starlette(routes=[Route("/hooks/calls", hook, methods=["POST"])])


async def test_sender_fake_delivers_verified_events_over_http():
    """The fake call center's sender posts events our connector verifies and parses."""
    conn = CallCenterConnector("calls", {"secret": SANDBOX_SECRET})
    seen: list = []
    async with serve_app(ingress_app(conn, seen)) as base:
        sender = CallCenterSender(url=f"{base}/hooks/calls")
        ok = await sender.send("transcript.segment", sample_data("transcript.segment"))
        wrong = await CallCenterSender(url=f"{base}/hooks/calls", secret="whsec_d3Jvbmc=").send(
            "call.started", sample_data("call.started"))
    assert ok.status_code == 202 and wrong.status_code == 401
    [event] = seen
    assert event.name == "transcript.segment" and event.dedupe_key == sender.sent[0]


@pytest.fixture
async def receiver():
    """The fake's receiving app on loopback, with fault injection."""
    state, faults = CallCenterState(), Faults()
    async with serve_app(with_faults(make_callcenter_app(state), faults)) as base:
        yield state, faults, f"{base}/events"


async def test_send_event_posts_a_signed_event(receiver, ctx):
    """send_event signs the envelope with the step's idempotency key as webhook-id."""
    state, _, url = receiver
    conn = CallCenterConnector("calls", {"secret": SANDBOX_SECRET, "url": url})
    try:
        result = await conn.call("send_event", {"type": "recording.ready", "data": sample_data("recording.ready")}, ctx)
        await conn.call("send_event", {"type": "recording.ready", "data": sample_data("recording.ready")}, ctx)
    finally:
        await conn.close()
    assert result == {"received": ctx.idempotency_key}
    assert state.ids == [ctx.idempotency_key] and state.events[0]["type"] == "recording.ready"


async def test_send_event_rejects_invalid_data_before_sending(receiver, ctx):
    """Data that breaks the event's schema is a PermanentError naming the field; nothing is sent."""
    state, faults, url = receiver
    conn = CallCenterConnector("calls", {"secret": SANDBOX_SECRET, "url": url})
    with pytest.raises(PermanentError, match="data.format"):
        await conn.call("send_event", {"type": "recording.ready",
                                       "data": {**sample_data("recording.ready"), "format": ""}}, ctx)
    with pytest.raises(PermanentError, match="type"):
        await conn.call("send_event", {"type": "call.exploded", "data": {}}, ctx)
    assert state.refused == 0 and state.events == [] and faults.injected == 0


@pytest.mark.parametrize(("status", "retry_after", "error"),
                         [(503, None, RetryableError), (429, 3, RetryableError), (401, None, PermanentError)],
                         ids=["503", "429", "401"])
async def test_send_event_classifies_receiver_failures(receiver, ctx, status, retry_after, error):
    """5xx/429 from the receiver are retryable (with Retry-After), 4xx permanent."""
    _, faults, url = receiver
    faults.fail_next(1, status=status, retry_after=retry_after)
    conn = CallCenterConnector("calls", {"secret": SANDBOX_SECRET, "url": url})
    with pytest.raises(error) as info:
        await conn.call("send_event", {"type": "call.started", "data": sample_data("call.started")}, ctx)
    await conn.close()
    if retry_after:
        assert info.value.retry_after == retry_after


async def test_send_event_timeout_and_refused_are_retryable(receiver, ctx):
    """A slow receiver and a closed port both give RetryableError."""
    _, faults, url = receiver
    faults.slow_next(1, seconds=0.5)
    payload = {"type": "call.started", "data": sample_data("call.started")}
    slow = CallCenterConnector("calls", {"secret": SANDBOX_SECRET, "url": url, "timeout": 0.1})
    with pytest.raises(RetryableError, match="timed out"):
        await slow.call("send_event", payload, ctx)
    await slow.close()
    dead = CallCenterConnector("calls", {"secret": SANDBOX_SECRET, "url": f"http://127.0.0.1:{free_port()}/x"})
    with pytest.raises(RetryableError):
        await dead.call("send_event", payload, ctx)
    await dead.close()


async def test_send_event_without_url_is_permanent(ctx):
    """send_event on a connector with no url says how to fix it."""
    with pytest.raises(PermanentError, match="settings.url is not set"):
        await make().call("send_event", {"type": "call.started", "data": sample_data("call.started")}, ctx)


async def test_sandbox_receiver_refuses_unsigned_posts(receiver):
    """The fake's receiving app answers 401 to an unsigned event, as a real endpoint would."""
    state, _, url = receiver
    async with httpx.AsyncClient() as client:
        response = await client.post(url, json=envelope(), headers={"webhook-id": "x", "webhook-timestamp": str(int(time.time()))})
    assert response.status_code == 401 and state.refused == 1
