"""The twilio_voice connector: create_call against the fake over loopback; signed callbacks in."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from twilio.request_validator import RequestValidator

from bus.errors import PayloadError, VerificationError
from connectors.base import ConnectorDeps, InboundRequest, PermanentError, RetryableError
from connectors.testing import free_port, run_in_thread, serve_app
from connectors.testing.fakes.twilio import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, make_twilio_app
from connectors.testing.faults import Faults, with_faults
from connectors.twilio import TwilioVoiceConnector

NOW = 1_750_000_000.0
HOOK = "https://bus.example/hooks/voice"


def seen_headers(app, seen: list[dict[str, str]]):
    """Wrap ``app`` to record each request's headers (lower-case names)."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return wrapped


@pytest.fixture(scope="module")
def _server():
    """One fake Twilio for the module, mounted under /sandbox/twilio as the bus will serve it."""
    app = make_twilio_app(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)
    faults, seen = Faults(), []
    mounted = Starlette(routes=[Mount("/sandbox/twilio", app=with_faults(seen_headers(app, seen), faults))])
    with run_in_thread(mounted) as url:
        yield url + "/sandbox/twilio", app.state.twilio, faults, seen


@pytest.fixture
def twilio(_server):
    """The shared fake, reset: yields (base_url, state, faults, seen request headers)."""
    _, state, faults, seen = _server
    state.reset()
    faults.clear()
    seen.clear()
    return _server


def voice(api_base: str = "https://api.twilio.com", **settings) -> TwilioVoiceConnector:
    config = {"account_sid": SANDBOX_ACCOUNT_SID, "auth_token": SANDBOX_AUTH_TOKEN, "api_base": api_base, **settings}
    return TwilioVoiceConnector("calls", config, ConnectorDeps(clock=lambda: NOW))


async def test_create_call_posts_form_and_returns_call(twilio, ctx):
    """create_call POSTs Calls.json form-encoded with basic auth and traceparent; returns sid and status."""
    url, state, _, seen = twilio
    conn = voice(url)
    result = await conn.call("create_call", {
        "to": "+14155550100", "from": "+14155550199", "url": "https://bus.example/twiml/hello",
        "status_callback": HOOK, "status_callback_event": ["initiated", "answered", "completed"], "timeout": 20,
    }, ctx)
    await conn.close()
    [call] = state.calls.values()
    assert result == {"sid": call["sid"], "status": "queued", "to": "+14155550100", "from": "+14155550199",
                      "direction": "outbound-api", "date_created": call["date_created"], "uri": call["uri"]}
    assert state.call_events[call["sid"]] == ["initiated", "answered", "completed"]
    assert seen[0]["traceparent"] == ctx.traceparent
    assert seen[0]["content-type"] == "application/x-www-form-urlencoded"


async def test_auth_failure_is_permanent_with_twilio_message(twilio, ctx):
    """Wrong credentials: PermanentError carrying Twilio's 20003 'Authenticate', never the token."""
    url, *_ = twilio
    conn = TwilioVoiceConnector("calls", {"account_sid": SANDBOX_ACCOUNT_SID, "auth_token": "wrong-token-1234",
                                          "api_base": url})
    with pytest.raises(PermanentError, match="Twilio error 20003: Authenticate") as info:
        await conn.call("create_call", {"to": "+14155550100", "from": "+14155550199", "twiml": "<Response/>"}, ctx)
    await conn.close()
    assert info.value.status == 401
    assert "wrong-token-1234" not in str(info.value)


async def test_vendor_validation_error_is_permanent(twilio, ctx):
    """An invalid 'To' comes back as Twilio's 21211 message, permanent."""
    url, *_ = twilio
    conn = voice(url)
    with pytest.raises(PermanentError, match="21211: The 'To' number 12345 is not a valid phone number"):
        await conn.call("create_call", {"to": "12345", "from": "+14155550199", "twiml": "<Response/>"}, ctx)
    await conn.close()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"from": "+1415", "twiml": "<Response/>"}, "'to' is a required property", id="no-to"),
        pytest.param({"to": "+1415", "from": "+1416"}, "url/twiml", id="neither-url-nor-twiml"),
        pytest.param({"to": "+1", "from": "+2", "url": "https://x/", "twiml": "<R/>"}, "url/twiml", id="both"),
        pytest.param({"to": "+1", "from": "+2", "url": "ftp://x"}, "url:", id="bad-url"),
    ],
)
async def test_bad_input_is_permanent_and_sends_nothing(twilio, ctx, payload, field):
    """Input that breaks the action's contract fails permanently, naming the field, with 0 requests."""
    url, state, *_ = twilio
    conn = voice(url)
    with pytest.raises(PermanentError, match=field):
        await conn.call("create_call", payload, ctx)
    await conn.close()
    assert state.requests == []


@pytest.mark.parametrize(
    ("status", "retry_after"), [pytest.param(503, None, id="503"), pytest.param(429, 7.0, id="429-retry-after")]
)
async def test_overload_is_retryable(twilio, ctx, status, retry_after):
    """503 and 429 are retryable; Retry-After is honoured."""
    url, _, faults, _ = twilio
    faults.fail_next(1, status=status, retry_after=retry_after)
    conn = voice(url)
    with pytest.raises(RetryableError) as info:
        await conn.call("create_call", {"to": "+14155550100", "from": "+14155550199", "twiml": "<Response/>"}, ctx)
    await conn.close()
    assert info.value.retry_after == retry_after
    assert f"HTTP {status}" in str(info.value)


async def test_timeout_is_retryable(ctx):
    """A Twilio that answers too late is a retryable, ambiguous failure."""
    faults = Faults()
    async with serve_app(with_faults(make_twilio_app(), faults)) as url:
        faults.slow_next(1, seconds=0.4)
        conn = voice(url, timeout=0.1)
        with pytest.raises(RetryableError, match="timed out") as info:
            await conn.call("create_call", {"to": "+14155550100", "from": "+14155550199", "twiml": "<R/>"}, ctx)
        await conn.close()
    assert info.value.detail == {"ambiguous": True}


async def test_connection_refused_is_retryable(ctx):
    """Nothing listening: retryable, not ambiguous (Twilio got nothing)."""
    conn = voice(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableError, match="could not connect") as info:
        await conn.call("create_call", {"to": "+14155550100", "from": "+14155550199", "twiml": "<Response/>"}, ctx)
    await conn.close()
    assert info.value.detail == {"ambiguous": False}


# ----- inbound -----------------------------------------------------------------------------
def form_request(url: str, params: dict[str, str], signature: str | None, headers: dict[str, str] | None = None):
    parts = urlsplit(url)
    hdrs = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
    if signature is not None:
        hdrs["x-twilio-signature"] = signature
    return InboundRequest("POST", url, parts.path, hdrs, dict(parse_qsl(parts.query)), urlencode(params).encode())


def call_params(status: str, seq: str | None = "0", **extra: str) -> dict[str, str]:
    params = {"AccountSid": SANDBOX_ACCOUNT_SID, "CallSid": "CA" + "1" * 32, "CallStatus": status,
              "From": "+14155550199", "To": "+14155550100", "Direction": "outbound-api",
              "Timestamp": format_datetime(datetime.fromtimestamp(NOW - 5, UTC)), **extra}
    if seq is not None:
        params.setdefault("SequenceNumber", seq)
    return params


def official(url: str, params: dict[str, str], token: str = SANDBOX_AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


@pytest.mark.parametrize(
    ("status", "extra", "event", "dedupe"),
    [
        pytest.param("initiated", {}, "call.initiated", ":0", id="initiated"),
        pytest.param("ringing", {"SequenceNumber": "1"}, "call.ringing", ":1", id="ringing"),
        pytest.param("in-progress", {"SequenceNumber": "2"}, "call.answered", ":2", id="answered"),
        pytest.param("completed", {"SequenceNumber": "3", "CallDuration": "42"}, "call.completed", ":3", id="completed"),
        pytest.param("no-answer", {"SequenceNumber": "3"}, "call.completed", ":3", id="no-answer"),
    ],
)
def test_call_status_callbacks_become_events(status, extra, event, dedupe):
    """Each CallStatus maps to its event, snake_case body, ints for numbers, CallSid:SequenceNumber key."""
    conn = voice()
    params = call_params(status, **extra)
    request = form_request(HOOK, params, official(HOOK, params))
    conn.verify(request)
    [ev] = conn.parse(request)
    assert (ev.name, ev.dedupe_key) == (event, "CA" + "1" * 32 + dedupe)
    assert ev.body["call_status"] == status
    assert ev.body["from"] == "+14155550199" and ev.body["call_sid"] == "CA" + "1" * 32
    assert ev.body["sequence_number"] == int(params["SequenceNumber"])
    if "CallDuration" in extra:
        assert ev.body["duration"] == 42


def test_dedupe_falls_back_to_status_without_sequence_number():
    """Without SequenceNumber the dedupe key is CallSid:CallStatus."""
    [ev] = voice().parse(form_request(HOOK, call_params("busy", seq=None), None))
    assert ev.dedupe_key == "CA" + "1" * 32 + ":busy"


def test_recording_completed_and_others_dropped():
    """RecordingStatus=completed is recording.completed keyed by RecordingSid; in-progress is dropped."""
    conn = voice()
    params = {"AccountSid": SANDBOX_ACCOUNT_SID, "CallSid": "CA1", "RecordingSid": "RE9", "RecordingStatus": "completed",
              "RecordingUrl": "https://api.twilio.com/rec/RE9", "RecordingDuration": "17"}
    [ev] = conn.parse(form_request(HOOK, params, None))
    assert (ev.name, ev.dedupe_key, ev.body["recording_duration"]) == ("recording.completed", "RE9", 17)
    assert conn.parse(form_request(HOOK, {**params, "RecordingStatus": "in-progress"}, None)) == []


def test_fake_callbacks_parse_end_to_end():
    """The fake's signed status callback verifies and parses (sandbox path)."""
    app = make_twilio_app()
    state = app.state.twilio
    state.calls["CA1"] = {"sid": "CA1", "from": "+1", "to": "+2", "direction": "outbound-api", "sequence": 0}
    state.callbacks["CA1"], state.call_events["CA1"] = HOOK, ["completed"]
    state.clock = lambda: NOW
    cb = state.set_call_status("CA1", "completed", duration=9)
    request = InboundRequest("POST", cb.url, "/hooks/voice", dict(cb.headers), {}, cb.body)
    conn = voice()
    conn.verify(request)
    [ev] = conn.parse(request)
    assert (ev.name, ev.body["duration"], ev.dedupe_key) == ("call.completed", 9, "CA1:0")


def test_not_a_voice_callback_is_payload_error():
    """A body without CallSid/CallStatus or RecordingSid is refused as a payload error."""
    with pytest.raises(PayloadError, match="CallSid and CallStatus"):
        voice().parse(form_request(HOOK, {"Foo": "bar"}, None))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("missing", "missing header X-Twilio-Signature", id="missing"),
        pytest.param("wrong", "does not match", id="wrong-token"),
        pytest.param("stale", "Timestamp parameter too old", id="stale"),
        pytest.param("future", "too far in the future", id="future"),
    ],
)
def test_verify_rejects(case, message):
    """verify() refuses a missing, wrongly keyed or stale (signed Timestamp out of max_age) callback."""
    params = call_params("completed")
    if case == "stale":
        params["Timestamp"] = format_datetime(datetime.fromtimestamp(NOW - 7200, UTC))
    if case == "future":
        params["Timestamp"] = format_datetime(datetime.fromtimestamp(NOW + 7200, UTC))
    sig = {"missing": None, "wrong": official(HOOK, params, "x" * 32)}.get(case, official(HOOK, params))
    with pytest.raises(VerificationError, match=message) as info:
        voice().verify(form_request(HOOK, params, sig))
    assert SANDBOX_AUTH_TOKEN not in str(info.value)


def test_verify_uses_public_url_with_request_query():
    """Behind a proxy, public_url replaces the request URL and keeps the request's query string."""
    public = "https://public.example/twilio/voice"
    params = call_params("ringing")
    sig = official(public + "?flow=a%20b", params)
    request = form_request("http://10.0.0.5:8080/hooks/voice?flow=a%20b", params, sig)
    voice(public_url=public).verify(request)
    with pytest.raises(VerificationError):
        voice().verify(request)


def test_verify_json_body_variant():
    """A JSON callback signed over URL+bodySHA256 verifies with the raw body and parses."""
    body = orjson.dumps({"CallSid": "CA7", "CallStatus": "ringing", "SequenceNumber": 1})
    validator = RequestValidator(SANDBOX_AUTH_TOKEN)
    url = f"{HOOK}?bodySHA256={validator.compute_hash(body.decode())}"
    request = InboundRequest("POST", url, "/hooks/voice",
                             {"content-type": "application/json",
                              "x-twilio-signature": validator.compute_signature(url, {})},
                             {}, body)
    conn = voice()
    conn.verify(request)
    [ev] = conn.parse(request)
    assert (ev.name, ev.dedupe_key, ev.body["sequence_number"]) == ("call.ringing", "CA7:1", 1)
    with pytest.raises(VerificationError, match="bodySHA256"):
        conn.verify(InboundRequest("POST", url, "/", request.headers, {}, body + b" "))


def test_secrets_absent_from_repr():
    """Neither the connector nor its settings show the auth token."""
    conn = voice(signing_key="shared-key-secret")
    assert SANDBOX_AUTH_TOKEN not in repr(conn) + repr(conn.settings)
    assert "shared-key-secret" not in repr(conn.settings)


async def test_owns_and_closes_its_client_unless_injected(ctx):
    """An injected httpx client is used and left open; without one the connector opens and closes its own."""
    async with httpx.AsyncClient() as client:
        conn = TwilioVoiceConnector("calls", {"account_sid": SANDBOX_ACCOUNT_SID, "auth_token": "t"},
                                    ConnectorDeps(http=client))
        await conn.start()
        assert conn._client is client
        await conn.close()
        assert not client.is_closed
