"""httpx over aiohttp: the request httpx built goes out as is; aiohttp errors become httpx's."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bus.security.aiohttp_transport import aiohttp_client
from connectors.testing.server import free_port, serve_app


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"method": request.method, "headers": request.headers.items(),
                         "body": body.decode("latin-1"), "query": str(request.query_params)})


async def repeated(request: Request) -> Response:
    response = Response("ok")
    response.raw_headers += [(b"x-tag", b"a"), (b"x-tag", b"b")]
    response.set_cookie("session", "s1")
    return response


async def cookie(request: Request) -> JSONResponse:
    return JSONResponse({"cookie": request.headers.getlist("cookie")})


async def zipped(request: Request) -> Response:
    return Response(gzip.compress(b"z" * 5000), headers={"content-encoding": "gzip"})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 16384

    return StreamingResponse(chunks())


async def slow(request: Request) -> Response:
    await asyncio.sleep(10)
    return Response("late")


async def long(request: Request) -> Response:
    return Response("ok", headers={"content-security-policy": "a" * 30000})


APP = Starlette(routes=[Route(p, f, methods=["GET", "POST", "PUT"]) for p, f in [
    ("/echo", echo), ("/repeated", repeated), ("/cookie", cookie), ("/zipped", zipped),
    ("/stream", stream), ("/slow", slow), ("/long", long)]])


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with serve_app(APP) as url, aiohttp_client(timeout=5.0) as client:
        yield client, url


def sent(response: httpx.Response) -> dict:
    data = response.json()
    data["headers"] = dict(data["headers"])
    return data


async def _chunks() -> AsyncIterator[bytes]:
    yield b"part one, "
    yield b"part two"


@pytest.mark.parametrize(("kwargs", "body", "content_type"), [
    ({"json": {"a": [1, "ü"]}}, '{"a":[1,"\u00c3\u00bc"]}', "application/json"),
    ({"data": {"To": "+15550100", "Body": "hi there"}}, "To=%2B15550100&Body=hi+there",
     "application/x-www-form-urlencoded"),
    ({"content": b"\x00raw\xff"}, "\x00raw\xff", None),
    ({"content": _chunks}, "part one, part two", None),
], ids=["json", "form", "bytes", "streamed"])
async def test_request_bodies_arrive_as_httpx_encoded_them(served, kwargs, body, content_type):
    """JSON, form, bytes and streamed bodies arrive intact, with httpx's headers and no others."""
    client, url = served
    if callable(kwargs.get("content")):
        kwargs = {"content": kwargs["content"]()}
    got = sent(await client.post(f"{url}/echo?q=1", **kwargs))
    assert got["method"] == "POST" and got["query"] == "q=1"
    assert got["body"] == body
    assert got["headers"].get("content-type") == content_type
    assert got["headers"]["user-agent"].startswith("python-httpx/")


async def test_multipart_upload_arrives_whole(served):
    """A multipart body (file and field) arrives with its boundary and length."""
    client, url = served
    got = sent(await client.post(f"{url}/echo", data={"note": "n"},
                                 files={"file": ("a.txt", b"file body", "text/plain")}))
    assert got["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert int(got["headers"]["content-length"]) == len(got["body"].encode("latin-1"))
    assert 'name="note"' in got["body"] and "file body" in got["body"]


async def test_repeated_response_headers_are_kept(served):
    """Several headers of one name all reach the caller, in order."""
    client, url = served
    response = await client.get(f"{url}/repeated")
    assert response.headers.get_list("x-tag") == ["a", "b"]


async def test_cookies_are_httpx_business_only(served):
    """aiohttp keeps no cookie jar of its own: a cookie goes back once, from httpx's jar."""
    client, url = served
    await client.get(f"{url}/repeated")
    assert (await client.get(f"{url}/cookie")).json() == {"cookie": ["session=s1"]}


async def test_compressed_body_is_decoded_once(served):
    """Content-Encoding is left to httpx: the caller reads the plain body."""
    client, url = served
    response = await client.get(f"{url}/zipped")
    assert response.headers["content-encoding"] == "gzip" and response.text == "z" * 5000


async def test_streamed_response_is_read_in_chunks(served):
    """``client.stream`` yields the body as it arrives; closing it frees the connection."""
    client, url = served
    async with client.stream("GET", f"{url}/stream") as response:
        sizes = [len(chunk) async for chunk in response.aiter_raw()]
    assert sum(sizes) == 64 * 16384
    assert (await client.get(f"{url}/repeated")).status_code == 200


async def test_connection_refused_is_a_connect_error():
    """Nothing listening: httpx.ConnectError, which connectors retry."""
    async with aiohttp_client(timeout=2.0) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_slow_answer_is_a_read_timeout(served):
    """No response within the read timeout: httpx.ReadTimeout."""
    client, url = served
    with pytest.raises(httpx.ReadTimeout):
        await client.get(f"{url}/slow", timeout=0.2)


@asynccontextmanager
async def raw_server(answer: bytes | None) -> AsyncIterator[str]:
    """A TCP server that reads the request head, then writes ``answer`` and hangs up, or (None)
    never reads at all."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is None:
            await asyncio.sleep(30)
        else:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize("answer", [b"", b"NOT HTTP AT ALL\r\n\r\n"], ids=["hang-up", "garbage"])
async def test_broken_answers_are_protocol_errors(answer):
    """A peer that hangs up or answers garbage: httpx.RemoteProtocolError, as with httpcore."""
    async with raw_server(answer) as url, aiohttp_client(timeout=2.0) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)


async def test_body_the_peer_never_reads_is_a_write_timeout():
    """aiohttp has no write timeout; a body stuck in the socket ends as httpx.WriteTimeout."""
    timeout = httpx.Timeout(0.3)
    async with raw_server(None) as url, aiohttp_client(timeout=timeout) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(url, content=b"x" * (64 << 20))


async def test_header_injection_is_refused_locally(served):
    """A newline in a header value never reaches the wire: a local protocol error."""
    client, url = served
    with pytest.raises(httpx.LocalProtocolError):
        await client.get(f"{url}/echo", headers={"x-note": "a\r\nb: c"})


def test_works_on_uvloop():
    """The transport runs on uvloop too (the loop uvicorn picks when it is installed)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> dict:
        async with serve_app(APP) as url, aiohttp_client(timeout=5.0) as client:
            return sent(await client.post(f"{url}/echo", json={"on": "uvloop"}))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main())["body"] == '{"on":"uvloop"}'


async def test_long_response_headers_are_read(served):
    """A header line far over aiohttp's 8 KiB default still arrives, as it does with httpcore."""
    client, url = served
    response = await client.get(f"{url}/long")
    assert len(response.headers["content-security-policy"]) == 30000
