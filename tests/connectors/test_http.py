"""The http connector against a real sink on loopback."""

from __future__ import annotations

import base64

import httpx
import pytest

from connectors.base import CallContext, ConnectorDeps, PermanentError, RetryableError
from connectors.http import HttpConnector
from connectors.testing import free_port

TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def make(sink):
    """Build started http connectors pointed at the sink; closed after the test."""
    made: list[HttpConnector] = []

    async def build(**settings) -> HttpConnector:
        conn = HttpConnector("crm", {"base_url": sink.url, **settings})
        await conn.start()
        made.append(conn)
        return conn

    yield build
    for conn in made:
        await conn.close()


async def test_post_delivers_json_and_returns_parsed_response(make, sink, ctx):
    """'post' sends the payload as JSON to settings.path and returns the JSON answer."""
    sink.state.respond(201, {"id": "T-1"})
    conn = await make(path="/tickets")
    result = await conn.call("post", {"subject": "hi", "n": 1}, ctx)
    assert result == {"id": "T-1"}
    [got] = sink.state.delivered
    assert (got.method, got.path, got.json) == ("POST", "/tickets", {"subject": "hi", "n": 1})
    assert got.headers["content-type"] == "application/json"


async def test_request_fills_path_params_query_and_headers(make, sink, ctx):
    """'request' fills {placeholders} from params (URL-quoted) and sends query and headers."""
    conn = await make(base_url=sink.url + "/v2/")
    payload = {
        "method": "put",
        "path": "/tickets/{id}/notes",
        "params": {"id": "T/1"},
        "query": {"notify": True, "tag": ["a", "b"]},
        "headers": {"X-Extra": "yes"},
        "json": [1, 2],
    }
    await conn.call("request", payload, ctx)
    [got] = sink.state.delivered
    assert got.method == "PUT"
    assert got.target == "/v2/tickets/T%2F1/notes?notify=true&tag=a&tag=b"
    assert got.headers["x-extra"] == "yes"
    assert got.json == [1, 2]


async def test_request_sends_text_body_and_returns_text_result(make, sink, ctx):
    """A 'body' string goes as is; a non-JSON answer comes back as {status, text}."""
    sink.state.respond(200, text="accepted")
    conn = await make()
    result = await conn.call("request", {"path": "/raw", "body": "a=1&b=2"}, ctx)
    assert result == {"status": 200, "text": "accepted"}
    assert sink.state.delivered[0].body == b"a=1&b=2"


async def test_sends_idempotency_key_and_traceparent(make, sink, ctx):
    """Every call carries the step's Idempotency-Key and the message's traceparent."""
    conn = await make()
    await conn.call("post", {}, ctx)
    headers = sink.state.delivered[0].headers
    assert headers["idempotency-key"] == ctx.idempotency_key
    assert headers["traceparent"] == ctx.traceparent


async def test_no_traceparent_header_without_one(make, sink, ctx):
    """A message without a trace sends no traceparent header."""
    conn = await make()
    plain = CallContext(message_id="m", flow="f", step="steps[0]", idempotency_key="m-0")
    await conn.call("post", {}, plain)
    assert "traceparent" not in sink.state.delivered[0].headers


@pytest.mark.parametrize(
    ("status", "retry_after", "error", "expected_retry_after"),
    [
        (503, None, RetryableError, None),
        (500, None, RetryableError, None),
        (429, 7, RetryableError, 7.0),
        (408, None, RetryableError, None),
        (400, None, PermanentError, None),
        (404, None, PermanentError, None),
    ],
    ids=["503", "500", "429-retry-after", "408", "400", "404"],
)
async def test_error_statuses_are_classified(make, sink, ctx, status, retry_after, error, expected_retry_after):
    """5xx/429/408 are retryable (honouring Retry-After), other 4xx permanent; both say status and body."""
    sink.state.fail_next(1, status=status, retry_after=retry_after)
    conn = await make()
    with pytest.raises(error) as info:
        await conn.call("post", {}, ctx)
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value)
    assert f"scripted failure {status}" in str(info.value)  # the body excerpt
    assert "'crm'" in str(info.value)
    if error is RetryableError:
        assert info.value.retry_after == expected_retry_after


async def test_timeout_is_retryable_and_names_the_host(make, sink, ctx):
    """A vendor slower than the timeout gives a RetryableError naming the host."""
    sink.state.delay = 5
    conn = await make(timeout=0.2)
    with pytest.raises(RetryableError, match=r"127\.0\.0\.1.*timed out"):
        await conn.call("post", {}, ctx)


async def test_connection_refused_is_retryable(ctx):
    """Nothing listening on the port is a RetryableError naming the host, without credentials."""
    conn = HttpConnector("crm", {"base_url": f"http://127.0.0.1:{free_port()}", "auth": {"bearer": TOKEN}})
    await conn.start()
    try:
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1") as info:
            await conn.call("post", {}, ctx)
    finally:
        await conn.close()
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ({"bearer": TOKEN}, "authorization", f"Bearer {TOKEN}"),
        (
            {"basic": {"username": "ann", "password": "pw:1"}},
            "authorization",
            "Basic " + base64.b64encode(b"ann:pw:1").decode(),
        ),
        ({"api_key": {"header": "X-Api-Key", "value": TOKEN}}, "x-api-key", TOKEN),
    ],
    ids=["bearer", "basic", "api_key"],
)
async def test_auth_headers(make, sink, ctx, auth, header, value):
    """Each auth style puts its credentials in the expected header."""
    conn = await make(auth=auth, headers={"Accept": "application/json"})
    await conn.call("post", {}, ctx)
    headers = sink.state.delivered[0].headers
    assert headers[header] == value
    assert headers["accept"] == "application/json"


async def test_secrets_stay_out_of_repr_and_errors(make, sink, ctx):
    """Neither repr nor an error carries the token, even when the vendor echoes it back."""
    sink.state.respond(401, {"error": f"bad token Bearer {TOKEN}"})
    conn = await make(auth={"bearer": TOKEN})
    with pytest.raises(PermanentError) as info:
        await conn.call("post", {}, ctx)
    assert TOKEN not in str(info.value)
    assert "***" in str(info.value)
    assert TOKEN not in repr(conn) and TOKEN not in repr(conn.settings)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"method": "FETCH", "path": "/x"}, "method"),
        ({"path": 5}, "path"),
        ({"method": "GET"}, "path"),
        ({"path": "/x", "headers": {"X-N": 1}}, "headers.X-N"),
        ({"path": "/x", "color": "red"}, "color"),
    ],
    ids=["bad-method", "path-type", "path-missing", "header-type", "unknown-key"],
)
async def test_bad_input_is_permanent_and_sends_nothing(make, sink, ctx, payload, field):
    """Input that breaks the action schema fails permanently, naming the field, before any request."""
    conn = await make()
    with pytest.raises(PermanentError, match="input of action 'request' is invalid") as info:
        await conn.call("request", payload, ctx)
    assert field in str(info.value)
    assert sink.state.requests == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"path": "/t/{id}"}, "needs params.id"),
        ({"path": "/t", "json": {}, "body": "x"}, "either 'json' or 'body'"),
    ],
    ids=["missing-param", "json-and-body"],
)
async def test_inconsistent_input_is_permanent_and_sends_nothing(make, sink, ctx, payload, message):
    """A missing path parameter or both json and body fail permanently before any request."""
    conn = await make()
    with pytest.raises(PermanentError, match=message):
        await conn.call("request", payload, ctx)
    assert sink.state.requests == []


async def test_injected_client_is_used(ctx):
    """A client passed in ConnectorDeps (here with httpx.MockTransport) carries the calls."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        conn = HttpConnector("crm", {"base_url": "https://api.example.com"}, ConnectorDeps(http=client))
        await conn.start()
        assert await conn.call("post", {"a": 1}, ctx) == {"ok": True}
        await conn.close()
        assert not client.is_closed  # not ours to close
    assert str(seen[0].url) == "https://api.example.com/"
