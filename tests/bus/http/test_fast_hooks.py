"""The webhook fast path answers exactly as the Starlette route does, and keeps HTTP/1.1 whole."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httptools
import httpx
import pytest

from bus.http.app import build_app
from bus.http.fast_hooks import hook_protocol
from bus.runtime import Runtime
from connectors.testing.server import serve_app
from tests.e2e.test_delivery import MAPPING, ORDER, flows, signed

ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
RATE = "  data_dir: ./data\n  http: {rate_limit: {rate: 1/min, burst: 2}}"


class Tripwire:
    """The ASGI app as uvicorn calls it, noting each path that reached it."""

    def __init__(self, app):
        self.app, self.paths = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@dataclass
class Servers:
    runtime: Runtime
    fast: str  # served with hook_protocol, as `tieline run` serves
    asgi: str  # uvicorn's own protocol: every request through Starlette
    fast_seen: Tripwire
    asgi_seen: Tripwire


@asynccontextmanager
async def servers(tmp_path: Path, sink_url: str, *, rule: str = "",
                  settings: str = "") -> AsyncIterator[Servers]:
    """One bus, its app served twice: on the fast path and on the plain ASGI path."""
    text = flows(sink_url)
    if rule:
        text = text.replace("    type: webhook\n", f"    type: webhook\n    ingress: {rule}\n", 1)
    if settings:
        text = text.replace("  data_dir: ./data", settings)
    (tmp_path / "mappings").mkdir(exist_ok=True)
    (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING)
    (tmp_path / "flows.yaml").write_text(text)
    runtime = Runtime.from_file(tmp_path / "flows.yaml")
    await runtime.start(consume=False)
    try:
        app = build_app(runtime)
        fast_seen, asgi_seen = Tripwire(app), Tripwire(app)
        async with serve_app(fast_seen, http=hook_protocol(runtime, app)) as fast, \
                serve_app(asgi_seen) as asgi:
            yield Servers(runtime, fast, asgi, fast_seen, asgi_seen)
    finally:
        await runtime.stop()


def masked(response: httpx.Response) -> tuple:
    """What a caller sees of an answer, message ids and the echoed webhook id masked."""
    text = ULID.sub("<id>", response.text)
    text = re.sub(r"evt-(fast|asgi)-", "evt-", text)
    return (response.status_code, response.headers.get("content-type"),
            response.headers.get("retry-after"), text)


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), 1000):
        yield body[i:i + 1000]


def order(tag: str, **extra) -> tuple[bytes, dict[str, str]]:
    return signed({**ORDER, **extra}, tag)


Case = Callable[[httpx.AsyncClient, str], "asyncio.Future[list[httpx.Response]]"]


async def accepted(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    return [await c.post("/hooks/vendor", content=body, headers=headers)]


async def duplicate(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    return [await c.post("/hooks/vendor", content=body, headers=headers) for _ in range(2)]


async def bad_signature(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    return [await c.post("/hooks/vendor", content=body, headers=headers)]


async def unknown_connector(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    return [await c.post("/hooks/nobody", content=body, headers=headers)]


async def too_large(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag, pad="x" * 300_000)
    return [await c.post("/hooks/vendor", content=body, headers=headers)]


async def too_large_chunked(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag, pad="x" * 300_000)
    return [await c.post("/hooks/vendor", content=chunked(body), headers=headers)]


async def chunked_ok(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag, pad="x" * 5_000)
    return [await c.post("/hooks/vendor", content=chunked(body), headers=headers)]


async def not_json(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    _, headers = order(tag)
    return [await c.post("/hooks/vendor", content=b"{not json", headers=headers)]


async def with_query(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    return [await c.post("/hooks/vendor?a=1&b=", content=body, headers=headers)]


async def get_hook(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    return [await c.get("/hooks/vendor?status=1")]


async def headers_too_large(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    headers.update({f"x-pad-{i}": "x" * 400 for i in range(50)})
    return [await c.post("/hooks/vendor", content=body, headers=headers)]


async def other_method(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    return [await c.put("/hooks/vendor", content=b"{}")]


async def nested_path(c: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    body, headers = order(tag)
    return [await c.post("/hooks/vendor/more", content=body, headers=headers)]


CASES = [accepted, duplicate, bad_signature, unknown_connector, too_large, too_large_chunked,
         chunked_ok, not_json, with_query, get_hook, headers_too_large, other_method, nested_path]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_fast_path_answers_as_the_starlette_route(tmp_path, sink, case):
    """Status, content type, Retry-After and body are the same on both paths (ids masked)."""
    async with servers(tmp_path, sink[1]) as s:
        async with httpx.AsyncClient(base_url=s.fast) as fast, \
                httpx.AsyncClient(base_url=s.asgi) as asgi:
            by_fast = [masked(r) for r in await case(fast, "evt-fast-1")]
            by_asgi = [masked(r) for r in await case(asgi, "evt-asgi-1")]
    assert by_fast == by_asgi
    assert by_fast[0][0] in {200, 202, 400, 401, 404, 405, 413, 431}


async def test_webhooks_skip_the_asgi_app_and_are_counted(tmp_path, sink):
    """On the fast path a hook never reaches the ASGI app; other routes do; metrics count both."""
    async with servers(tmp_path, sink[1]) as s, httpx.AsyncClient(base_url=s.fast) as c:
        body, headers = order("evt-trip")
        r = await c.post("/hooks/vendor", content=body, headers=headers)
        assert r.status_code == 202
        (mid,) = r.json()["accepted"]
        assert (await s.runtime.transport.message(mid)) is not None  # committed before the 202
        assert (await c.get("/healthz")).status_code == 200
        metrics = (await c.get("/metrics")).text
    assert s.fast_seen.paths == ["/healthz", "/metrics"]
    assert 'tieline_http_requests_total{route="/hooks/{connector}",status="202"} 1.0' in metrics


@pytest.mark.parametrize(("rule", "headers", "status"), [
    ("{allow_ips: [10.0.0.0/8]}", {}, 403),
    ("{api_key: 0123456789abcdef0123}", {}, 401),
    ("{api_key: 0123456789abcdef0123}", {"x-api-key": "0123456789abcdef0123"}, 202),
], ids=["ip-not-allowed", "api-key-missing", "api-key-ok"])
async def test_hook_rules_hold_on_both_paths(tmp_path, sink, rule, headers, status):
    """A hook's IP allow-list and API key give the same answer on both paths."""
    async with servers(tmp_path, sink[1], rule=rule) as s:
        answers = []
        for url, tag in ((s.fast, "evt-fast-r"), (s.asgi, "evt-asgi-r")):
            body, signed_headers = order(tag)
            async with httpx.AsyncClient(base_url=url) as c:
                r = await c.post("/hooks/vendor", content=body, headers={**signed_headers, **headers})
            answers.append(masked(r))
    assert answers[0] == answers[1] and answers[0][0] == status


async def test_rate_limit_is_one_budget_across_both_paths(tmp_path, sink):
    """The fast path draws on the middleware's buckets: 2 allowed in all, then 429 on either."""
    async with servers(tmp_path, sink[1], settings=RATE) as s:
        async with httpx.AsyncClient(base_url=s.fast) as fast, \
                httpx.AsyncClient(base_url=s.asgi) as asgi:
            codes = []
            for i, c in enumerate((fast, asgi, fast, asgi)):
                body, headers = order(f"evt-rate-{i}")
                codes.append(await c.post("/hooks/vendor", content=body, headers=headers))
    assert [r.status_code for r in codes] == [202, 202, 429, 429]
    assert masked(codes[2]) == masked(codes[3])
    assert codes[2].json()["error"]["code"] == "rate_limited"


def request(tag: str, *, extra: bytes = b"", version: bytes = b"1.1", path: bytes = b"/hooks/vendor") -> bytes:
    body, headers = order(tag)
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    return (b"POST " + path + b" HTTP/" + version + b"\r\nhost: test\r\n" + head + extra
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)


class Answers:
    """Responses read off a raw connection with httptools."""

    def __init__(self):
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.parser = httptools.HttpResponseParser(self)
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""

    async def read(self, reader: asyncio.StreamReader, count: int) -> list:
        while len(self.done) < count:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                break
            self.parser.feed_data(data)
        return self.done


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_pipelined_requests_are_answered_in_order(tmp_path, sink):
    """Hooks and other routes sent back to back on one connection are answered in order."""
    async with servers(tmp_path, sink[1]) as s:
        reader, writer = await open_raw(s.fast)
        writer.write(request("evt-p1") + b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"
                     + request("evt-p2") + request("evt-p1"))
        answers = await Answers().read(reader, 4)
        writer.close()
    assert [a[0] for a in answers] == [202, 200, 202, 200]
    assert b'"duplicate_of"' in answers[3][2]
    assert all(a[1][b"content-length"] == str(len(a[2])).encode() for a in answers)


async def test_expect_100_continue_gets_its_interim_answer(tmp_path, sink):
    """A client that waits for 100 Continue before its body gets it, then the 202."""
    async with servers(tmp_path, sink[1]) as s:
        reader, writer = await open_raw(s.fast)
        whole = request("evt-100", extra=b"expect: 100-continue\r\n")
        head, body = whole.split(b"\r\n\r\n", 1)
        writer.write(head + b"\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        (answer,) = await Answers().read(reader, 1)
        writer.close()
    assert answer[0] == 202


@pytest.mark.parametrize(("version", "extra"), [(b"1.0", b""), (b"1.1", b"connection: close\r\n")],
                         ids=["http-1.0", "connection-close"])
async def test_a_connection_the_client_ends_is_closed_after_the_answer(tmp_path, sink, version, extra):
    """HTTP/1.0 and Connection: close get their answer with Connection: close, then EOF."""
    async with servers(tmp_path, sink[1]) as s:
        reader, writer = await open_raw(s.fast)
        writer.write(request("evt-close", version=version, extra=extra))
        (answer,) = await Answers().read(reader, 1)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
        writer.close()
    assert answer[0] == 202 and answer[1][b"connection"] == b"close"


async def test_percent_encoded_and_proxied_hooks_take_the_asgi_path(tmp_path, sink):
    """Requests the fast path would read differently from uvicorn go to the ASGI app."""
    async with servers(tmp_path, sink[1]) as s:
        reader, writer = await open_raw(s.fast)
        writer.write(request("evt-pct", path=b"/hooks/v%65ndor")
                     + request("evt-fwd", extra=b"x-forwarded-for: 10.1.2.3\r\n"))
        answers = await Answers().read(reader, 2)
        writer.close()
    assert [a[0] for a in answers] == [202, 202]
    assert s.fast_seen.paths == ["/hooks/vendor", "/hooks/vendor"]
