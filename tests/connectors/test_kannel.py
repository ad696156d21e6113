"""The kannel connector against the fake smsbox on loopback, with DLR and MO callbacks into the sink."""

from __future__ import annotations

import pytest

from bus.errors import PayloadError, VerificationError
from connectors.base import InboundRequest, PermanentError, RetryableError
from connectors.kannel import KannelConnector
from connectors.testing import SinkRequest, free_port, serve_app
from connectors.testing.fakes.kannel import (
    QUEUED,
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    KannelState,
    fill_escape_codes,
    make_kannel_app,
)
from connectors.testing.faults import Faults, with_faults

DLR_SECRET = "dlr-secret-0123456789abcdef"
MO_TOKEN = "mo-token-0123456789abcdef"


@pytest.fixture
async def kannel():
    """The fake smsbox with fault injection: (state, faults, base_url)."""
    state, faults = KannelState(), Faults()
    async with serve_app(with_faults(make_kannel_app(state), faults)) as base:
        yield state, faults, base


@pytest.fixture
async def make(kannel, sink):
    """Build kannel connectors on the fake, with the sink as tieline's public URL."""
    made: list[KannelConnector] = []

    def build(**settings) -> KannelConnector:
        base = {"base_url": kannel[2], "username": SANDBOX_USERNAME, "password": SANDBOX_PASSWORD,
                "from": "TieLine", "public_url": sink.url, "dlr_secret": DLR_SECRET, "mo_token": MO_TOKEN}
        conn = KannelConnector("sms", {**base, **settings})
        made.append(conn)
        return conn

    yield build
    for conn in made:
        await conn.close()


def offline(**settings) -> KannelConnector:
    """A connector for inbound-only tests: no smsbox needed."""
    return KannelConnector("sms", {"base_url": "http://kannel.invalid:13013", "username": SANDBOX_USERNAME,
                                   "password": SANDBOX_PASSWORD, "public_url": "https://tieline.example",
                                   "dlr_secret": DLR_SECRET, "mo_token": MO_TOKEN, **settings})


def inbound(rec: SinkRequest) -> InboundRequest:
    """What the ingress would hand the connector for a request the sink received."""
    return InboundRequest(method=rec.method, url=rec.target, path=rec.path, headers=rec.headers,
                          query=rec.query, body=rec.body)


async def test_send_sms_sends_kannel_parameters(make, kannel, ctx):
    """send_sms GETs /cgi-bin/sendsms with credentials, sender, text, charset, dlr-mask and dlr-url."""
    state, _, _ = kannel
    result = await make().call("send_sms", {"to": "+4915112345678", "text": "Your parcel is on its way"}, ctx)
    assert result == {"status": "accepted", "answer": "0: Accepted for delivery",
                      "message_key": ctx.idempotency_key, "dlr_requested": True}
    [sms] = state.sent
    assert (sms.sender, sms.receiver, sms.text, sms.charset, sms.coding) == (
        "TieLine", "+4915112345678", "Your parcel is on its way", "UTF-8", 0)
    assert sms.dlr_mask == 31
    assert "/hooks/sms?t=" in sms.dlr_url and "status=%d" in sms.dlr_url and "answer=%A" in sms.dlr_url


async def test_send_sms_options_and_unicode(make, kannel, ctx):
    """Non-ASCII text goes as UCS-2 (coding=2); from, smsc and dlr_mask can be set per message."""
    state, _, _ = kannel
    await make(smsc="default").call(
        "send_sms", {"to": "4915112345678", "text": "Paket zugestellt ✓", "from": "Shop", "smsc": "vodafone",
                     "dlr_mask": 19}, ctx)
    [sms] = state.sent
    assert (sms.coding, sms.sender, sms.smsc, sms.dlr_mask, sms.text) == (2, "Shop", "vodafone", 19, "Paket zugestellt ✓")


async def test_queued_answer_is_success(make, kannel, ctx):
    """'3: Queued for later delivery' is a success reported as status 'queued'."""
    kannel[0].answer = QUEUED
    result = await make().call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    assert result["status"] == "queued"


async def test_no_dlr_url_without_public_url(make, kannel, ctx):
    """Without public_url and dlr_secret no delivery report is requested."""
    conn = KannelConnector("sms", {"base_url": kannel[2], "username": SANDBOX_USERNAME,
                                   "password": SANDBOX_PASSWORD, "from": "TieLine"})
    try:
        result = await conn.call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    finally:
        await conn.close()
    assert result["dlr_requested"] is False and kannel[0].sent[0].dlr_url == ""


@pytest.mark.parametrize(
    ("settings", "message", "status"),
    [
        ({"password": "wrong-password"}, "Authorization failed for sendsms", 403),
        ({"from": ""}, "Sender missing and no global set, rejected", 400),
    ],
    ids=["bad-password", "no-sender"],
)
async def test_kannel_refusals_are_permanent(make, ctx, settings, message, status):
    """Kannel's 403/400 answers are PermanentErrors carrying Kannel's own message, never the password."""
    with pytest.raises(PermanentError) as info:
        await make(**settings).call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    assert message in str(info.value) and info.value.status == status
    assert "wrong-password" not in str(info.value) and SANDBOX_PASSWORD not in str(info.value)


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 4), (500, None)], ids=["503", "429", "500"])
async def test_overload_is_retryable(make, kannel, ctx, status, retry_after):
    """503 (Kannel's 'Temporal failure'), 500 and 429 are retryable, honouring Retry-After."""
    kannel[1].fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(RetryableError) as info:
        await make().call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    assert info.value.retry_after == retry_after and kannel[0].sent == []


async def test_timeout_and_connection_refused_are_retryable(make, kannel, ctx):
    """A slow smsbox and a closed port are retryable and name the host."""
    kannel[1].slow_next(1, seconds=0.5)
    with pytest.raises(RetryableError, match=r"127\.0\.0\.1.*timed out"):
        await make(timeout=0.1).call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    with pytest.raises(RetryableError, match="127.0.0.1"):
        await make(base_url=f"http://127.0.0.1:{free_port()}").call("send_sms", {"to": "+4915112345678", "text": "x"}, ctx)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"to": "+49 151 1234", "text": "hi"}, "to"),
        ({"to": "+4915112345678", "text": ""}, "text"),
        ({"to": "+4915112345678"}, "text"),
        ({"to": "+4915112345678", "text": "hi", "dlr_mask": 64}, "dlr_mask"),
        ({"to": "+4915112345678", "text": "hi", "priority": 1}, "priority"),
    ],
    ids=["spaces-in-to", "empty-text", "missing-text", "mask-range", "unknown-field"],
)
async def test_bad_input_is_permanent_and_sends_nothing(make, kannel, ctx, payload, field):
    """A payload that breaks send_sms's schema names the field and makes no request."""
    with pytest.raises(PermanentError, match=field):
        await make().call("send_sms", payload, ctx)
    assert kannel[0].requests == 0


async def test_delivery_report_round_trip(make, kannel, sink, ctx):
    """Kannel's DLR callback to the generated dlr-url verifies and parses into sms.delivery_report."""
    conn = make()
    await conn.call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    assert await kannel[0].deliver_reports(status=1, answer="id:123 stat:DELIVRD") == [200]
    [rec] = sink.state.requests
    assert rec.method == "GET" and rec.path == "/hooks/sms"
    req = inbound(rec)
    conn.verify(req)
    [event] = conn.parse(req)
    assert event.name == "sms.delivery_report"
    body = event.body
    assert (body["message_key"], body["status"], body["status_name"], body["final"]) == (
        ctx.idempotency_key, 1, "delivered", True)
    assert (body["to"], body["from"], body["answer"], body["smsc"]) == (
        "+4915112345678", "TieLine", "id:123 stat:DELIVRD", "sandbox")
    assert body["timestamp"].endswith("Z") and body["smsc_message_id"].startswith("smsc-")
    assert event.dedupe_key == f"{ctx.idempotency_key}:1"


@pytest.mark.parametrize(("status", "name", "final"), [(2, "failed", True), (8, "smsc_submit", False),
                                                       (16, "smsc_reject", True), (4, "buffered", False)])
async def test_dlr_statuses_are_decoded(make, kannel, sink, ctx, status, name, final):
    """Each Kannel DLR value is named and marked final or not."""
    conn = make()
    await conn.call("send_sms", {"to": "+4915112345678", "text": "hi"}, ctx)
    await kannel[0].deliver_reports(status=status)
    [event] = conn.parse(inbound(sink.state.requests[0]))
    assert (event.body["status"], event.body["status_name"], event.body["final"]) == (status, name, final)


async def test_incoming_sms_round_trip(make, kannel, sink):
    """An MO SMS through the sms-service get-url becomes sms.received."""
    conn = make()
    response = await kannel[0].deliver_mo(conn.mo_url(), sender="+4915112345678", receiver="+4989123",
                                          text="STOP  all  messages")
    assert response.status_code == 200
    req = inbound(sink.state.requests[0])
    conn.verify(req)
    [event] = conn.parse(req)
    assert event.name == "sms.received"
    assert (event.body["from"], event.body["to"], event.body["text"]) == ("+4915112345678", "+4989123",
                                                                          "STOP all messages")
    assert event.dedupe_key == event.body["message_id"]


def dlr_request(conn: KannelConnector, key: str = "01HZZTEST-1", **query: str) -> InboundRequest:
    q = {"t": conn.dlr_token(key), "status": "1", "to": "+49151", "from": "TieLine", **query}
    return InboundRequest(method="GET", url="/hooks/sms", path="/hooks/sms", headers={}, query=q, body=b"")


def forged(conn: KannelConnector) -> str:
    """The key of one token with the MAC of another."""
    return conn.dlr_token("victim-key").split(".")[0] + "." + conn.dlr_token("other").split(".")[1]


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "a.b", lambda c: forged(c), lambda c: "x" + MO_TOKEN,
     lambda c: KannelConnector("sms", {"base_url": "http://k", "username": "u", "password": "p",
                                       "public_url": "http://t", "dlr_secret": "another-secret-0123456"}
                               ).dlr_token("01HZZTEST-1")],
    ids=["absent", "empty", "garbage", "not-base64", "swapped-mac", "wrong-mo-token", "other-secret"],
)
def test_forged_tokens_are_rejected(token):
    """Requests without our token, or with a forged one, raise VerificationError."""
    conn = offline()
    req = dlr_request(conn)
    query = dict(req.query)
    value = token(conn) if callable(token) else token
    if value is None:
        del query["t"]
    else:
        query["t"] = value
    with pytest.raises(VerificationError, match="token"):
        conn.verify(InboundRequest(method="GET", url="/", path="/", headers={}, query=query, body=b""))


def test_report_with_bad_status_is_a_payload_error():
    """A verified report without a numeric status is a PayloadError (400)."""
    conn = offline()
    with pytest.raises(PayloadError, match="status"):
        conn.parse(dlr_request(conn, status="%d"))


def test_secrets_are_not_in_repr():
    """Password, DLR secret and MO token never show in repr()."""
    conn = offline()
    for text in (repr(conn), repr(conn.settings)):
        assert SANDBOX_PASSWORD not in text and DLR_SECRET not in text and MO_TOKEN not in text


def test_fill_escape_codes_follows_kannel():
    """The fake substitutes codes like Kannel: known codes replaced, %% kept as %, unknown left."""
    assert fill_escape_codes("a=%d&b=%p&c=%%&d=%z", {"d": "1", "p": "%2B49"}) == "a=1&b=%2B49&c=%&d=%z"
