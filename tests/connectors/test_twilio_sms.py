"""The twilio_sms connector against the fake over loopback: sends, reconciliation, callbacks; and the fake."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from twilio.request_validator import RequestValidator

from bus.errors import VerificationError
from connectors.base import ConnectorDeps, InboundRequest, PermanentError, RetryableError
from connectors.testing import free_port, run_in_thread, serve_app
from connectors.testing.fakes.twilio import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, make_twilio_app
from connectors.testing.faults import Faults, with_faults
from connectors.twilio import TwilioSmsConnector

HOOK = "https://bus.example/hooks/sms"
MSG = {"to": "+14155550100", "from": "+14155550199", "body": "Your parcel is out for delivery"}
MSS = "MG" + "a" * 32


class LoseAnswers:
    """Wrap the fake so Twilio acts on the next POST but its answer is lost (502, or too late)."""

    def __init__(self, app):
        self.app, self.mode, self.delay = app, "", 0.0

    def arm(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not self.mode:
            await self.app(scope, receive, send)
            return
        mode, self.mode = self.mode, ""

        async def swallow(message):
            pass

        await self.app(scope, receive, swallow)  # the message IS created...
        await asyncio.sleep(self.delay)  # ...and the answer is late (mode "late") or replaced (mode "502")
        await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": f"bad gateway ({mode})".encode()})


@pytest.fixture(scope="module")
def _server():
    """One fake Twilio for the module, mounted under /sandbox/twilio as the bus will serve it."""
    app = make_twilio_app(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)
    faults, lose = Faults(), LoseAnswers(app)
    mounted = Starlette(routes=[Mount("/sandbox/twilio", app=with_faults(lose, faults))])
    with run_in_thread(mounted) as url:
        yield url + "/sandbox/twilio", app.state.twilio, faults, lose


@pytest.fixture
def twilio(_server):
    """The shared fake, reset: yields (base_url, state, faults, lose)."""
    _, state, faults, lose = _server
    state.reset()
    faults.clear()
    lose.arm("")
    return _server


@pytest.fixture
async def own_twilio():
    """A fake of the test's own, for tests that leave a slow handler behind (it finishes at teardown)."""
    app = make_twilio_app(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)
    faults = Faults()
    async with serve_app(with_faults(app, faults)) as url:
        yield url, app.state.twilio, faults


def sms(api_base: str = "https://api.twilio.com", **settings) -> TwilioSmsConnector:
    config = {"account_sid": SANDBOX_ACCOUNT_SID, "auth_token": SANDBOX_AUTH_TOKEN, "api_base": api_base, **settings}
    return TwilioSmsConnector("sms", config, ConnectorDeps())


async def test_send_sms_creates_message_with_keyed_status_callback(twilio, ctx):
    """send_sms POSTs Messages.json; the StatusCallback carries tl_key=<idempotency key>."""
    url, state, *_ = twilio
    conn = sms(url, status_callback=HOOK + "?flow=notify")
    result = await conn.call("send_sms", MSG, ctx)
    await conn.close()
    [msg] = state.messages.values()
    assert result == {"sid": msg["sid"], "status": "queued", "to": MSG["to"], "from": MSG["from"],
                      "messaging_service_sid": None, "date_created": msg["date_created"], "error_code": None,
                      "reconciled": False}
    assert msg["body"] == MSG["body"]
    assert state.callbacks[msg["sid"]] == f"{HOOK}?flow=notify&tl_key={ctx.idempotency_key}"
    assert state.requests == [("POST", "Messages.json")]


async def test_send_with_messaging_service(twilio, ctx):
    """A MessagingServiceSid alone is a valid sender; Twilio answers 'accepted'."""
    url, state, *_ = twilio
    conn = sms(url)
    result = await conn.call("send_sms", {"to": MSG["to"], "messaging_service_sid": MSS, "body": "hi"}, ctx)
    await conn.close()
    assert (result["status"], result["messaging_service_sid"], result["from"]) == ("accepted", MSS, None)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"to": "+1", "body": "x"}, "from: give 'from' or 'messaging_service_sid'", id="no-sender"),
        pytest.param({"to": "+1", "from": "+2"}, "'body' is a required property", id="no-body"),
        pytest.param({**MSG, "body": "x" * 1601}, "body:", id="body-too-long"),
        pytest.param({**MSG, "messaging_service_sid": "MG1"}, "messaging_service_sid:", id="bad-mss"),
    ],
)
async def test_bad_input_is_permanent_and_sends_nothing(twilio, ctx, payload, field):
    """Input that breaks the contract fails permanently naming the field, with 0 requests."""
    url, state, *_ = twilio
    conn = sms(url)
    with pytest.raises(PermanentError, match=field):
        await conn.call("send_sms", payload, ctx)
    await conn.close()
    assert state.requests == []


@pytest.mark.parametrize(
    ("token", "payload", "message"),
    [
        pytest.param("wrong-token-1234", MSG, "Twilio error 20003: Authenticate", id="auth"),
        pytest.param(SANDBOX_AUTH_TOKEN, {**MSG, "to": "0800 123"}, "21211: The 'To' number 0800 123 is not", id="bad-to"),
    ],
)
async def test_vendor_rejections_are_permanent_and_not_reconciled(twilio, ctx, token, payload, message):
    """401 and 400 carry Twilio's code and message, are permanent, and trigger no lookup."""
    url, state, *_ = twilio
    conn = TwilioSmsConnector("sms", {"account_sid": SANDBOX_ACCOUNT_SID, "auth_token": token, "api_base": url})
    with pytest.raises(PermanentError, match=message) as info:
        await conn.call("send_sms", payload, ctx)
    await conn.close()
    assert "wrong-token-1234" not in str(info.value)
    assert state.requests == [("POST", "Messages.json")]


async def test_429_is_retryable_without_lookup(twilio, ctx):
    """429 + Retry-After: Twilio created nothing, so no reconciliation; retry_after is kept."""
    url, state, faults, _ = twilio
    faults.fail_next(1, status=429, retry_after=7)
    conn = sms(url)
    with pytest.raises(RetryableError) as info:
        await conn.call("send_sms", MSG, ctx)
    await conn.close()
    assert info.value.retry_after == 7
    assert state.requests == []


async def test_503_is_reconciled_then_retryable(twilio, ctx):
    """A 503 is ambiguous: the connector looks for the message, finds none, raises Retryable."""
    url, state, faults, _ = twilio
    faults.fail_next(1, status=503)
    conn = sms(url)
    with pytest.raises(RetryableError, match="HTTP 503"):
        await conn.call("send_sms", MSG, ctx)
    await conn.close()
    assert state.requests == [("GET", "Messages.json")]
    assert state.messages == {}


@pytest.mark.parametrize(
    ("mode", "timeout"), [pytest.param("502", 5.0, id="answer-replaced-by-502"), pytest.param("late", 0.2, id="answer-late")]
)
async def test_ambiguous_failure_after_creation_returns_the_sent_message(twilio, ctx, mode, timeout):
    """Twilio created the message but the answer was lost: it is found and returned, not resent."""
    url, state, _, lose = twilio
    lose.arm(mode, delay=0.5 if mode == "late" else 0.0)
    conn = sms(url, timeout=timeout)
    result = await conn.call("send_sms", MSG, ctx)
    await conn.close()
    [msg] = state.messages.values()
    assert (result["sid"], result["reconciled"]) == (msg["sid"], True)
    assert state.requests == [("POST", "Messages.json"), ("GET", "Messages.json")]


async def test_retry_after_restart_finds_earlier_send(twilio, ctx):
    """Attempt 2 in a fresh process looks first, finds attempt 1's message, and sends nothing."""
    url, state, *_ = twilio
    first = sms(url)
    sent = await first.call("send_sms", MSG, ctx)
    await first.close()
    again = sms(url)
    result = await again.call("send_sms", MSG, dataclasses.replace(ctx, attempt=2))
    await again.close()
    assert (result["sid"], result["reconciled"]) == (sent["sid"], True)
    assert len(state.messages) == 1
    assert state.requests == [("POST", "Messages.json"), ("GET", "Messages.json")]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"body": "another text"}, id="other-body"),
        pytest.param({"age": 2 * 86400}, id="older-than-window"),
        pytest.param({"to": "+14155550111"}, id="other-recipient"),
    ],
)
async def test_retry_sends_when_no_matching_message(twilio, ctx, other):
    """A retry whose lookup finds no matching message (body, window, recipient) sends it."""
    url, state, *_ = twilio
    if "age" in other:
        state.clock = lambda: time.time() - other["age"]
    earlier = {**MSG, **{k: v for k, v in other.items() if k != "age"}}
    first = sms(url)
    await first.call("send_sms", earlier, ctx)
    await first.close()
    state.clock = time.time
    conn = sms(url, reconcile_window=3600)
    result = await conn.call("send_sms", MSG, dataclasses.replace(ctx, attempt=2))
    await conn.close()
    assert result["reconciled"] is False
    assert len(state.messages) == 2


async def test_retry_does_not_send_blind_when_lookup_fails(twilio, ctx):
    """If the pre-send lookup fails, the retry raises Retryable and sends nothing."""
    url, state, faults, _ = twilio
    faults.fail_next(1, status=503)
    conn = sms(url)
    with pytest.raises(RetryableError, match="HTTP 503"):
        await conn.call("send_sms", MSG, dataclasses.replace(ctx, attempt=3))
    await conn.close()
    assert state.requests == [] and state.messages == {}


@pytest.mark.parametrize(
    ("base", "match"),
    [pytest.param("closed", "could not connect", id="connection-refused")],
)
async def test_connection_refused_is_retryable(ctx, base, match):
    """Nothing listening: retryable, not ambiguous."""
    conn = sms(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableError, match=match) as info:
        await conn.call("send_sms", MSG, ctx)
    await conn.close()
    assert info.value.detail == {"ambiguous": False}


async def test_timeout_is_retryable(own_twilio, ctx):
    """A slow Twilio (answer after the timeout) is retryable."""
    url, _, faults = own_twilio
    faults.slow_next(1, seconds=0.4)
    conn = sms(url, timeout=0.1)
    with pytest.raises(RetryableError, match="timed out"):
        await conn.call("send_sms", MSG, ctx)
    await conn.close()


# ----- inbound -----------------------------------------------------------------------------
def inbound(url: str, params: dict[str, str], signature: str | None) -> InboundRequest:
    parts = urlsplit(url)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["x-twilio-signature"] = signature
    return InboundRequest("POST", url, parts.path, headers, dict(parse_qsl(parts.query)), urlencode(params).encode())


async def test_status_callback_from_fake_becomes_sms_status(twilio, ctx):
    """The fake's signed status callback verifies and parses: sms.status with the step's idempotency key."""
    url, state, *_ = twilio
    conn = sms(url, status_callback=HOOK)
    sent = await conn.call("send_sms", MSG, ctx)
    await conn.close()
    cb = state.set_message_status(sent["sid"], "undelivered", error_code=30003)
    request = InboundRequest("POST", cb.url, "/hooks/sms", dict(cb.headers),
                             dict(parse_qsl(urlsplit(cb.url).query)), cb.body)
    conn.verify(request)
    [ev] = conn.parse(request)
    assert (ev.name, ev.dedupe_key) == ("sms.status", f"{sent['sid']}:undelivered")
    assert ev.body["idempotency_key"] == ctx.idempotency_key
    assert (ev.body["message_status"], ev.body["error_code"], ev.body["to"]) == ("undelivered", 30003, MSG["to"])


def test_incoming_message_signed_by_official_validator():
    """An incoming SMS signed by RequestValidator verifies and parses as sms.received keyed by MessageSid."""
    params = {"MessageSid": "SM" + "2" * 32, "AccountSid": SANDBOX_ACCOUNT_SID, "From": "+14155550100",
              "To": "+14155550199", "Body": "STOP", "NumMedia": "0", "SmsStatus": "received"}
    request = inbound(HOOK, params, RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(HOOK, params))
    conn = sms()
    conn.verify(request)
    [ev] = conn.parse(request)
    assert (ev.name, ev.dedupe_key) == ("sms.received", params["MessageSid"])
    assert (ev.body["from"], ev.body["body"], ev.body["num_media"]) == ("+14155550100", "STOP", 0)


@pytest.mark.parametrize("case", ["missing", "wrong-token", "tampered"])
def test_verify_rejects_bad_signatures(case):
    """Missing, wrongly keyed or tampered status callbacks are refused."""
    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+1", "From": "+2"}
    sig = RequestValidator("x" * 32 if case == "wrong-token" else SANDBOX_AUTH_TOKEN).compute_signature(HOOK, params)
    if case == "tampered":
        params["MessageStatus"] = "failed"
    with pytest.raises(VerificationError):
        sms().verify(inbound(HOOK, params, None if case == "missing" else sig))


def test_secrets_absent_from_repr():
    """The auth token never shows in repr."""
    conn = sms()
    assert SANDBOX_AUTH_TOKEN not in repr(conn) + repr(conn.settings)


# ----- the fake itself ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        pytest.param({"From": "+1415", "Body": "x"}, 21604, "A 'To' phone number is required.", id="no-to"),
        pytest.param({"To": "+14155550100", "Body": "x"}, 21603, "A 'From' phone number is required.", id="no-from"),
        pytest.param({"To": "+14155550100", "From": "+1415"}, 21602, "Message body is required.", id="no-body"),
        pytest.param({"To": "555", "From": "+1415", "Body": "x"}, 21211, "The 'To' number 555 is not a valid phone number.", id="bad-to"),
    ],
)
async def test_fake_enforces_required_params(twilio, form, code, message):
    """The fake answers Twilio's error bodies: 400 per missing/invalid parameter, 401, 404."""
    url, *_ = twilio
    path = f"{url}/2010-04-01/Accounts/{SANDBOX_ACCOUNT_SID}/Messages"
    async with httpx.AsyncClient(auth=(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)) as client:
        resp = await client.post(f"{path}.json", data=form)
        bad = await client.get(f"{path}.json", auth=(SANDBOX_ACCOUNT_SID, "nope"))
        missing = await client.get(f"{path}/SM0.json")
    assert resp.status_code == 400
    assert resp.json() == {"code": code, "message": message, "status": 400,
                           "more_info": f"https://www.twilio.com/docs/errors/{code}"}
    assert (bad.status_code, bad.json()["code"], bad.json()["message"]) == (401, 20003, "Authenticate")
    assert (missing.status_code, missing.json()["code"]) == (404, 20404)


async def test_fake_date_sent_filter_skips_queued_messages(twilio):
    """DateSent filters match only messages already sent (date_sent is null while queued)."""
    url, state, *_ = twilio
    async with httpx.AsyncClient(auth=(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)) as client:
        path = f"{url}/2010-04-01/Accounts/{SANDBOX_ACCOUNT_SID}/Messages.json"
        sid = (await client.post(path, data={"To": MSG["to"], "From": MSG["from"], "Body": "a"})).json()["sid"]
        query = {"To": MSG["to"], "DateSent>": "2020-01-01T00:00:00Z"}
        before = (await client.get(path, params=query)).json()["messages"]
        state.set_message_status(sid, "sent")
        after = (await client.get(path, params=query)).json()["messages"]
        other = (await client.get(path, params={"To": "+19999999999"})).json()["messages"]
    assert before == [] and [m["sid"] for m in after] == [sid] and other == []
