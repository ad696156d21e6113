"""plain_request: a plain client's request sent straight to its AiohttpTransport goes out byte
for byte as the client would send it, answers come back the same, and the guard still holds."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from bus.security.aiohttp_transport import AiohttpTransport, aiohttp_client
from bus.security.netguard import BlockedAddressError, guarded_client
from bus.security.plain_request import plain_request, plain_transport, send_built
from connectors.testing.server import free_port

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in (*headers, f"Content-Length: {len(body)}"))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


class Wire:
    """A loopback HTTP/1.1 server that keeps each request's raw bytes and answers ``answers``
    in turn (the last one again when they run out)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answers: list[bytes] = [OK]
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Wire]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            yield self


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    async with Wire().running() as w:
        yield w


async def _noop(_: object) -> None:
    pass


class Recording(httpx.AsyncClient):
    """A client with its own ``send`` (as a test double might have)."""

    async def send(self, request: httpx.Request, **kwargs) -> httpx.Response:
        return await super().send(request, **kwargs)


JSON_HEADERS = [("Idempotency-Key", "k-1"), ("content-type", "application/json")]


@pytest.mark.parametrize(("method", "path", "params", "headers", "content"), [
    ("POST", "/orders", None, JSON_HEADERS, b'{"a":1}'),
    ("put", "/t/T%2F1/notes", {"notify": True, "tag": ["a", "b"], "n": 1.5}, JSON_HEADERS, b"[1]"),
    ("POST", "/p?x=1", {}, [("X-A", "1")], b"text"),
    ("POST", "/p?x=1", None, [("X-A", "1")], None),
    ("GET", "/a b/ü", None, [("Accept", "text/plain"), ("user-agent", "mine")], None),
    ("DELETE", "/x", None, [("Content-Length", "0"), ("Host", "example.test")], None),
    ("PATCH", "/x", None, [("Transfer-Encoding", "identity"), ("X-B", "2")], b"abc"),
], ids=["json", "query", "empty-query", "no-body", "get-odd-path", "own-host", "own-te"])
async def test_plain_request_sends_what_the_client_sends(wire, method, path, params, headers, content):
    """Request line, header order and case, Host, Content-Length and body are the client's."""
    async with aiohttp_client() as client:
        kwargs = dict(params=params, headers=headers, content=content, timeout=5.0)
        plain = plain_request(client, method, wire.url + path, **kwargs)
        assert plain is not None
        await plain.send()
        await client.send(client.build_request(method, wire.url + path, **kwargs))
    by_plain, by_client = wire.requests
    assert by_plain == by_client


@pytest.mark.parametrize("make", [
    lambda t: httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))),
    lambda t: httpx.AsyncClient(transport=t, auth=("user", "pw")),
    lambda t: httpx.AsyncClient(transport=t, event_hooks={"request": [_noop]}),
    lambda t: httpx.AsyncClient(transport=t, event_hooks={"response": [_noop]}),
    lambda t: httpx.AsyncClient(transport=t, follow_redirects=True),
    lambda t: httpx.AsyncClient(transport=t, cookies={"session": "s1"}),
    lambda t: httpx.AsyncClient(transport=t, params={"key": "v"}),
    lambda t: httpx.AsyncClient(transport=t, mounts={"http://": httpx.AsyncHTTPTransport()}),
    lambda t: Recording(transport=t),
], ids=["other-transport", "auth", "request-hook", "response-hook", "redirects", "cookies",
        "params", "mounts", "own-send"])
async def test_clients_that_need_httpx_get_no_plain_request(make):
    """Auth, hooks, followed redirects, cookies, default params, mounts or a send of its own:
    send with httpx."""
    async with make(AiohttpTransport()) as client:
        assert plain_transport(client) is None
        assert plain_request(client, "GET", "http://example.test/", headers=[], content=None,
                             timeout=1.0) is None


async def test_requests_that_need_httpx_get_no_plain_request():
    """A non-ASCII header or credentials in the URL (basic auth to httpx): send with httpx."""
    async with aiohttp_client() as client:
        assert plain_transport(client) is not None
        kwargs = dict(content=None, timeout=1.0)
        assert plain_request(client, "GET", "http://h.test/", headers=[("X", "é")], **kwargs) is None
        assert plain_request(client, "GET", "http://u:p@h.test/", headers=[], **kwargs) is None
        assert plain_request(client, "GET", "http://h.test/", headers=[], **kwargs) is not None
    assert plain_transport(client) is None  # closed


async def test_a_bad_url_raises_what_build_request_raises():
    """The URL is httpx's: the same exception as the client's build_request."""
    async with aiohttp_client() as client:
        with pytest.raises(httpx.InvalidURL) as by_client:
            client.build_request("GET", "http://h.test/\x00")
        with pytest.raises(httpx.InvalidURL) as by_plain:
            plain_request(client, "GET", "http://h.test/\x00", headers=[], content=None,
                          timeout=1.0)
    assert str(by_plain.value) == str(by_client.value)


async def test_the_shared_guarded_client_is_plain():
    """The runtime's client (guard built on first use) takes the plain path."""
    async with guarded_client() as client:
        assert isinstance(plain_transport(client), AiohttpTransport)


@pytest.mark.parametrize(("host", "table"), [
    ("127.0.0.1", {}), ("127.1", {}), ("[::1]", {}), ("internal.test", {"internal.test": ["10.0.0.7"]}),
], ids=["loopback", "odd-spelling", "ipv6-loopback", "private-answer"])
async def test_plain_requests_pass_the_guard(host, table):
    """Address hosts and resolved names are checked on the plain path too: refused, not sent."""

    async def resolver(name: str, port: int) -> list[str]:
        return table[name]

    async with guarded_client(resolver=resolver) as client:
        plain = plain_request(client, "POST", f"http://{host}:9/x", headers=[], content=b"{}",
                              timeout=2.0)
        assert plain is not None
        with pytest.raises(BlockedAddressError):
            await plain.send()


async def test_allow_listed_loopback_is_reached(wire):
    """An allow-listed address is sent to through the guard."""
    async with guarded_client(allow_cidrs=["127.0.0.0/8"]) as client:
        plain = plain_request(client, "POST", wire.url + "/in", headers=[], content=b"{}",
                              timeout=2.0)
        reply = await plain.send()
    assert reply.status_code == 200 and reply.content == b'{"ok":true}'
    assert wire.requests[0].startswith(b"POST /in HTTP/1.1\r\n")


async def test_reply_matches_the_clients_response(wire):
    """Status, repeated headers, a compressed body (decoded) and text are what httpx gives."""
    body = gzip.compress("héllo".encode("latin-1"))
    wire.answers = [answer("503 Service Unavailable", body, "Content-Type: text/plain; charset=latin-1",
                           "Content-Encoding: gzip", "Retry-After: 7", "X-Tag: a", "X-Tag: b")]
    async with aiohttp_client() as client:
        reply = await plain_request(client, "GET", wire.url, headers=[], content=None,
                                    timeout=2.0).send()
        response = await client.get(wire.url)
    assert reply.status_code == response.status_code == 503
    assert reply.content == response.content == "héllo".encode("latin-1")
    assert reply.header("x-tag") == response.headers["x-tag"] == "a, b"
    assert reply.header("retry-after") == "7" and reply.header("absent") == ""
    assert reply.response().text == response.text == "héllo"
    assert reply.response().headers == response.headers
    assert reply.response().reason_phrase == response.reason_phrase


async def test_a_broken_compressed_body_is_a_decoding_error(wire):
    """As with httpx: a body that does not decode raises DecodingError."""
    wire.answers = [answer("200 OK", b"not gzip", "Content-Encoding: gzip")]
    async with aiohttp_client() as client:
        with pytest.raises(httpx.DecodingError):
            await plain_request(client, "GET", wire.url, headers=[], content=None,
                                timeout=2.0).send()


async def test_cookies_are_kept_only_by_a_jar_that_keeps_them(wire):
    """A plain client's jar learns Set-Cookie (so its next call carries it, via httpx); the
    shared client's does not."""
    wire.answers = [answer("200 OK", b"{}", "Set-Cookie: session=s1; Path=/"), OK]
    async with aiohttp_client() as client:
        await plain_request(client, "GET", wire.url + "/a", headers=[], content=None,
                            timeout=2.0).send()
        assert client.cookies.get("session") == "s1"
        assert plain_request(client, "GET", wire.url, headers=[], content=None, timeout=2.0) is None
        await client.get(wire.url + "/b")
    assert b"Cookie: session=s1" in wire.requests[1]
    wire.answers = [answer("200 OK", b"{}", "Set-Cookie: session=s2; Path=/")]
    async with guarded_client(allow_cidrs=["127.0.0.0/8"]) as shared:
        await plain_request(shared, "GET", wire.url, headers=[], content=None, timeout=2.0).send()
        assert not shared.cookies


async def test_transport_failures_are_the_clients_exceptions(wire):
    """Connection refused and a silent server raise the httpx errors the client raises."""
    async with aiohttp_client() as client:
        url = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(httpx.ConnectError):
            await plain_request(client, "GET", url, headers=[], content=None, timeout=2.0).send()
        wire.answers = [b""]  # reads the request, never answers
        with pytest.raises(httpx.ReadTimeout):
            await plain_request(client, "GET", wire.url, headers=[], content=None, timeout=0.2).send()


@pytest.mark.parametrize("build", [
    dict(method="POST", url="/orders", json={"a": 1}, headers={"Idempotency-Key": "k"}),
    dict(method="POST", url="/form", data={"To": "+1", "Body": "hi"}, params={"x": "1"}),
    dict(method="GET", url="/cgi-bin/sendsms", params={"to": "+1 2", "text": "ü"}),
    dict(method="DELETE", url="/x"),
], ids=["json", "form", "query", "delete"])
async def test_a_built_request_is_sent_as_the_client_sends_it(wire, build):
    """send_built (what connectors' send() uses): same bytes on the wire, same response."""
    async with aiohttp_client(base_url=wire.url, headers={"X-Default": "d"}) as client:
        mine = await send_built(client, client.build_request(**build))
        assert mine is not None
        theirs = await client.send(client.build_request(**build))
    by_plain, by_client = wire.requests
    assert by_plain == by_client
    assert (mine.status_code, mine.headers, mine.content) == (theirs.status_code, theirs.headers,
                                                              theirs.content)
    assert mine.request.url == theirs.request.url


async def test_a_streamed_body_or_a_client_with_steps_is_left_to_the_client(wire):
    async def chunks():
        yield b"abc"

    async with aiohttp_client(base_url=wire.url) as client:
        assert await send_built(client, client.build_request("POST", "/s", content=chunks())) is None
    async with aiohttp_client(base_url=wire.url, auth=("u", "p")) as client:
        assert await send_built(client, client.build_request("GET", "/a")) is None
    assert wire.requests == []
