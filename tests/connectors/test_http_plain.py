"""The http connector's plain path (straight to the aiohttp transport) and its httpx path put
the same bytes on the wire and give the same results and errors."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest

from bus.security.aiohttp_transport import AiohttpTransport
from connectors.base import CallContext, ConnectorDeps, PermanentError, RetryableError
from connectors.http import HttpConnector
from tests.bus.security.test_plain_request import OK, Wire, answer

TOKEN = "s3cr3t-token-value"
PLAIN_CTX = CallContext(message_id="m", flow="f", step="steps[0]", idempotency_key="m-0")


class Counting(AiohttpTransport):
    """Counts requests by path taken: ``fetch`` (plain) or ``handle_async_request`` (httpx)."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = self.httpx = 0

    async def fetch(self, *args, **kwargs):
        self.plain += 1
        return await super().fetch(*args, **kwargs)

    async def handle_async_request(self, request):
        self.httpx += 1
        return await super().handle_async_request(request)


async def _noop(_: object) -> None:
    pass


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    async with Wire().running() as w:
        yield w


class Pair:
    """Connectors with the same settings on two clients: the first plain, the second with an
    event hook (so httpx sends); ``transports`` count what each path did."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.transports: list[Counting] = []
        self.made: list[tuple[HttpConnector, httpx.AsyncClient]] = []

    async def __call__(self, **settings) -> tuple[HttpConnector, HttpConnector]:
        out = []
        for hooks in ({}, {"request": [_noop]}):
            transport = Counting()
            client = httpx.AsyncClient(transport=transport, trust_env=False, event_hooks=hooks)
            conn = HttpConnector("crm", {"base_url": self.url, **settings}, ConnectorDeps(http=client))
            await conn.start()
            self.made.append((conn, client))
            self.transports.append(transport)
            out.append(conn)
        return out[0], out[1]


@pytest.fixture
async def pair(wire) -> AsyncIterator[Pair]:
    made = Pair(wire.url)
    yield made
    for conn, client in made.made:
        await conn.close()
        await client.aclose()


CALLS = [
    ({}, "post", {"a": 1, "ü": "é"}),
    ({"path": "/in"}, "post", {}),
    ({}, "request", {"method": "put", "path": "/t/{id}/notes", "params": {"id": "T/1 x"},
                     "query": {"n": 1, "on": True, "tag": ["a", "b"]},
                     "headers": {"idempotency-key": "mine", "Content-Type": "text/json", "X-E": "1"},
                     "json": [1, None]}),
    ({"headers": {"idempotency-key": "old", "Accept": "application/json", "X-Api": "v"},
      "auth": {"bearer": TOKEN}}, "request", {"path": "/raw", "body": "a=1&b=é"}),
    ({"auth": {"basic": {"username": "ann", "password": "pw"}}}, "request",
     {"method": "GET", "path": "/q?x=1", "query": {}}),
    ({"auth": {"api_key": {"header": "Authorization", "value": TOKEN}}}, "request",
     {"method": "DELETE", "path": ""}),
    ({"base_url_suffix": "/v2/"}, "request", {"path": "/p", "headers": {"Accept": "*/*"}}),
]


@pytest.mark.parametrize(("settings", "action", "payload"), CALLS,
                         ids=["post", "post-path", "request-all", "text-auth", "get-query",
                              "delete-empty-path", "base-path"])
@pytest.mark.parametrize("ctx_kind", ["traced", "untraced"])
async def test_both_paths_send_the_same_bytes(pair, wire, ctx, settings, action, payload, ctx_kind):
    """Method, target, headers (order and case included) and body are identical."""
    settings = dict(settings)
    if "base_url_suffix" in settings:
        settings["base_url"] = wire.url + settings.pop("base_url_suffix")
    plain, via_httpx = await pair(**settings)
    call_ctx = ctx if ctx_kind == "traced" else PLAIN_CTX
    assert await plain.call(action, payload, call_ctx) == await via_httpx.call(action, payload, call_ctx)
    by_plain, by_httpx = wire.requests
    assert by_plain == by_httpx
    by_plain_path, by_httpx_path = pair.transports
    assert (by_plain_path.plain, by_plain_path.httpx) == (1, 0)
    assert (by_httpx_path.plain, by_httpx_path.httpx) == (0, 1)


ANSWERS = [
    (answer("201 Created", b'{"id":"T-1"}', "Content-Type: application/json"), {"id": "T-1"}),
    (answer("200 OK", b"[1,2]"), [1, 2]),
    (answer("200 OK", b"accepted", "Content-Type: text/plain"), {"status": 200, "text": "accepted"}),
    (answer("200 OK", b"{broken", "Content-Type: application/json"),
     {"status": 200, "text": "{broken"}),
    (answer("200 OK", "caf\u00e9".encode("latin-1"), "Content-Type: text/plain; charset=latin-1"),
     {"status": 200, "text": "caf\u00e9"}),
    (answer("200 OK", gzip.compress(b'{"z":1}'), "Content-Encoding: gzip",
            "Content-Type: application/json"), {"z": 1}),
    (answer("204 No Content", b""), {"status": 204, "text": ""}),
    (answer("302 Found", b"moved", "Location: /elsewhere"), {"status": 302, "text": "moved"}),
    (answer("503 Service Unavailable", b"busy", "Retry-After: 7"), RetryableError),
    (answer("429 Too Many Requests", f"slow down {TOKEN}".encode()), RetryableError),
    (answer("404 Not Found", b"no such ticket"), PermanentError),
    (answer("400 Bad Request", b"", "Content-Type: application/json"), PermanentError),
    (answer("200 OK", b"not gzip", "Content-Encoding: gzip"), PermanentError),
]


@pytest.mark.parametrize(("reply", "expected"), ANSWERS,
                         ids=["json", "json-sniffed", "text", "bad-json", "latin-1", "gzip",
                              "no-content", "redirect", "503-retry-after", "429-redacted", "404",
                              "400-empty", "bad-gzip"])
async def test_both_paths_answer_the_same(pair, wire, ctx, reply, expected):
    """Results, error classes, messages (redacted), statuses and Retry-After are identical."""
    wire.answers = [reply]
    conns = await pair(auth={"bearer": TOKEN})
    if isinstance(expected, type):
        errors = []
        for conn in conns:
            with pytest.raises(expected) as info:
                await conn.call("post", {"a": 1}, ctx)
            errors.append(info.value)
        plain, via_httpx = errors
        assert str(plain) == str(via_httpx) and TOKEN not in str(plain)
        assert getattr(plain, "status", None) == getattr(via_httpx, "status", None)
        assert getattr(plain, "retry_after", None) == getattr(via_httpx, "retry_after", None)
    else:
        assert [await conn.call("post", {"a": 1}, ctx) for conn in conns] == [expected, expected]


async def test_both_paths_fail_the_same_on_transport_errors(pair, wire, ctx):
    """A silent server times out the same way on both paths: retryable, naming the host."""
    wire.answers = [b""]
    errors = []
    for conn in await pair(timeout=0.2):
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1.*timed out") as info:
            await conn.call("post", {}, ctx)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


async def test_non_ascii_headers_take_the_httpx_path(pair, wire, ctx):
    """A header httpx would refuse to encode is left to httpx: the same error on both."""
    errors = []
    for conn in await pair():
        with pytest.raises(UnicodeEncodeError) as info:
            await conn.call("request", {"path": "/x", "headers": {"X-Name": "é"}}, ctx)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and not wire.requests


async def test_an_answer_after_the_plain_path_is_read_whole(pair, wire, ctx):
    """Answers on a kept-alive connection stay in step: each call gets its own."""
    wire.answers = [answer("200 OK", b'{"n":1}'), answer("200 OK", b'{"n":2}'), OK]
    plain, _ = await pair()
    assert [await plain.call("post", {}, ctx) for _ in range(3)] == [{"n": 1}, {"n": 2}, {"ok": True}]
